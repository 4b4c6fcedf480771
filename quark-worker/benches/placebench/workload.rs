//! Synthetic workloads: who exists, when each arrives and who created it, who messages whom on
//! each tick, and how much memory each holds.

/// splitmix64: small, fast and fully determined by its seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The splitmix64 finaliser, also the hash placement's hash.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The communication and memory patterns PlaceBench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Groups of 8-32 instances; 90 % of messages stay in the group.
    Communities,
    /// Communities whose membership changes: every 10 ticks 10 % of instances join another group.
    Reshuffle,
    /// Hubs with 50-1000 spokes; spokes talk to their hub, hubs to their spokes.
    Hubs,
    /// Communities whose state grows every tick, some groups four times faster than others.
    Ramp,
    /// Communities with one instance whose state grows until it is half a worker's capacity.
    Leak,
    /// 2 regions x 2 zones x 2 racks: groups, inside clusters of groups, inside regions.
    Topology,
    /// No structure: every message goes to a uniformly random instance.
    Control,
}

impl Kind {
    pub(crate) const ALL: [Kind; 7] = [
        Kind::Communities,
        Kind::Reshuffle,
        Kind::Hubs,
        Kind::Ramp,
        Kind::Leak,
        Kind::Topology,
        Kind::Control,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Communities => "communities",
            Kind::Reshuffle => "reshuffle",
            Kind::Hubs => "hubs",
            Kind::Ramp => "ramp",
            Kind::Leak => "leak",
            Kind::Topology => "topology",
            Kind::Control => "control",
        }
    }

    pub(crate) fn memory_bound(self) -> bool {
        matches!(self, Kind::Ramp | Kind::Leak)
    }
}

/// Ticks between two changes of group memberships (reshuffle).
pub(crate) const RESHUFFLE_EVERY: u32 = 10;

/// Base state of an instance, in bytes.
const BASE_MEMORY: u64 = 16 * 1024;

/// One workload instance: the instances, their groups and their arrival.
#[derive(Debug)]
pub(crate) struct Workload {
    pub(crate) kind: Kind,
    pub(crate) n: usize,
    /// Each instance's group now.
    group_of: Vec<u32>,
    /// Each group's members now, and each instance's position in its group's list.
    groups: Vec<Vec<u32>>,
    position: Vec<u32>,
    /// Tick at which each instance starts, and the instance that started it (if any).
    pub(crate) arrive: Vec<u32>,
    pub(crate) creator: Vec<Option<u32>>,
    /// The bytes of a message sent by an instance of each group.
    message_bytes: Vec<u32>,
    /// Per group: state growth per tick, in bytes (ramp).
    growth: Vec<u64>,
    /// The leaking instance and its growth per tick.
    leak: Option<(u32, u64)>,
    /// Total ticks, for the memory patterns.
    ticks: u32,
    /// Memory each worker may hold (bytes), chosen by the workload.
    pub(crate) capacity: u64,
}

impl Workload {
    pub(crate) fn new(kind: Kind, n: usize, k: usize, ticks: u32, seed: u64) -> Workload {
        let mut rng = Rng::new(seed ^ mix(kind as u64 + 1));
        // Groups over consecutive ids, so that clusters of groups are id ranges.
        let mut group_of = Vec::with_capacity(n);
        let mut groups: Vec<Vec<u32>> = Vec::new();
        while group_of.len() < n {
            let size = match kind {
                Kind::Hubs => 50 + rng.below(951) as usize,
                _ => 8 + rng.below(25) as usize,
            }
            .min(n - group_of.len());
            let g = groups.len() as u32;
            let start = group_of.len() as u32;
            groups.push((start..start + size as u32).collect());
            group_of.extend(std::iter::repeat_n(g, size));
        }
        let position = (0..n)
            .map(|i| (i as u32) - groups[group_of[i] as usize][0])
            .collect();
        let arrivals = ticks / 4;
        let arrive: Vec<u32> = (0..n)
            .map(|_| rng.below(arrivals.max(1) as u64) as u32)
            .collect();
        // The creator is the member of the same group that arrived just before it (the run
        // that started it, as a parent starts a child). Control instances have none.
        let mut creator = vec![None; n];
        if kind != Kind::Control {
            for members in &groups {
                let mut order = members.clone();
                order.sort_by_key(|&i| (arrive[i as usize], i));
                for pair in order.windows(2) {
                    creator[pair[1] as usize] = Some(pair[0]);
                }
            }
        }
        let message_bytes = groups.iter().map(|_| 256 << rng.below(5)).collect();
        let growth: Vec<u64> = groups
            .iter()
            .map(|_| if rng.unit() < 0.2 { 4 } else { 1 })
            .collect();
        // Ramp: the final total is 72 % of all workers' memory. Leak: the base is 55 % of it
        // and the leak ends at half of one worker's capacity.
        let base_total = BASE_MEMORY * n as u64;
        let (capacity, leak, growth) = match kind {
            Kind::Ramp => {
                let rate: u64 = groups
                    .iter()
                    .zip(&growth)
                    .map(|(m, &g)| m.len() as u64 * g)
                    .sum();
                // Per unit of rate, so that the final total is twice the base.
                let unit = (base_total / (rate * ticks as u64)).max(1);
                let final_total = base_total + unit * rate * ticks as u64;
                let cap = (final_total as f64 / (0.72 * k as f64)) as u64;
                (cap, None, growth.iter().map(|g| g * unit).collect())
            }
            Kind::Leak => {
                let cap = (base_total as f64 / (0.55 * k as f64)) as u64;
                let victim = rng.below(n as u64) as u32;
                (
                    cap,
                    Some((victim, cap / 2 / ticks as u64)),
                    vec![0; groups.len()],
                )
            }
            _ => (4 * base_total / k as u64, None, vec![0; groups.len()]),
        };
        Workload {
            kind,
            n,
            group_of,
            groups,
            position,
            arrive,
            creator,
            message_bytes,
            growth,
            leak,
            ticks,
            capacity,
        }
    }

    /// Changes group memberships at `tick` (reshuffle only).
    pub(crate) fn evolve(&mut self, tick: u32, rng: &mut Rng) {
        if self.kind != Kind::Reshuffle || tick == 0 || !tick.is_multiple_of(RESHUFFLE_EVERY) {
            return;
        }
        for _ in 0..self.n / 10 {
            let i = rng.below(self.n as u64) as u32;
            let to = rng.below(self.groups.len() as u64) as u32;
            let from = self.group_of[i as usize];
            if from == to || self.groups[from as usize].len() <= 2 {
                continue;
            }
            let pos = self.position[i as usize] as usize;
            let list = &mut self.groups[from as usize];
            list.swap_remove(pos);
            if let Some(&moved) = list.get(pos) {
                self.position[moved as usize] = pos as u32;
            }
            self.position[i as usize] = self.groups[to as usize].len() as u32;
            self.groups[to as usize].push(i);
            self.group_of[i as usize] = to;
        }
    }

    /// The receiver and size of the message `sender` sends this tick.
    pub(crate) fn message(&self, sender: u32, rng: &mut Rng) -> (u32, u32) {
        let n = self.n as u64;
        let g = self.group_of[sender as usize] as usize;
        let members = &self.groups[g];
        let bytes = self.message_bytes[g];
        let in_group = |rng: &mut Rng| members[rng.below(members.len() as u64) as usize];
        let anyone = |rng: &mut Rng| rng.below(n) as u32;
        let r = rng.unit();
        let to = match self.kind {
            Kind::Control => anyone(rng),
            Kind::Hubs => {
                let hub = members[0];
                if sender == hub {
                    in_group(rng)
                } else if r < 0.9 {
                    hub
                } else {
                    anyone(rng)
                }
            }
            Kind::Topology => {
                // Zones and regions are id ranges: a quarter and a half of all ids.
                let range = |parts: u64, rng: &mut Rng| {
                    let width = n / parts;
                    let part = (sender as u64 / width).min(parts - 1);
                    (part * width + rng.below(width)) as u32
                };
                if r < 0.75 {
                    in_group(rng)
                } else if r < 0.90 {
                    range(4, rng)
                } else if r < 0.97 {
                    range(2, rng)
                } else {
                    anyone(rng)
                }
            }
            _ => {
                if r < 0.9 {
                    in_group(rng)
                } else {
                    anyone(rng)
                }
            }
        };
        (to, bytes)
    }

    /// The memory an instance holds at `tick`.
    pub(crate) fn memory(&self, instance: u32, tick: u32) -> u64 {
        let tick = tick.min(self.ticks) as u64;
        let grown = BASE_MEMORY + self.growth[self.group_of[instance as usize] as usize] * tick;
        match self.leak {
            Some((victim, rate)) if victim == instance => grown + rate * tick,
            _ => grown,
        }
    }
}
