//! Where a worker is, and what a message between two places costs.
//!
//! A worker's [`Place`] comes from the labels it registers (`region`, `zone`, `rack`). Two places
//! are at a [`Distance`]: the deepest level they share. [`Costs`] turns a distance into the cost of
//! one unit of traffic, which is what the repartitioner in
//! [`partition`](super::partition) minimises.
//!
//! There is no `host` level: the unit of placement is the worker process, and a host that runs two
//! workers of one deployment is rare enough that treating them as a shared rack loses little.

use std::time::Duration;

use serde_json::{Map, Value};

/// The worker labels that say where a worker is, from the widest level to the narrowest.
pub const TOPOLOGY_LABELS: &[&str] = &["region", "zone", "rack"];

/// A worker's labels could not be read as a place, or measured latencies could not be turned into
/// costs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// A topology label holds something other than a string. Register the label as a string
    /// (for example `"zone": "eu-west-1a"`), or remove it.
    #[error("worker label `{label}` must be a string, found {found}")]
    NotAString {
        /// The label's name (`region`, `zone` or `rack`).
        label: String,
        /// The JSON type found instead.
        found: &'static str,
    },
    /// A topology label is the empty string, which would make unrelated workers look co-located.
    /// Give it a real name or remove it.
    #[error("worker label `{label}` is empty")]
    Empty {
        /// The label's name.
        label: String,
    },
    /// A label that names a topology level Quark does not know, or a known one misspelt
    /// (`Zone`, `availability_zone`, `dc`): it would be ignored, and the worker placed as if it
    /// had no such level. Use `region`, `zone` and `rack`.
    #[error("worker label `{label}` is not a topology label Quark knows; use `{meant}` instead")]
    Unknown {
        /// The label given.
        label: String,
        /// The label it most likely means.
        meant: &'static str,
    },
    /// A narrower level without the wider one it is named in (a rack without a zone, a zone
    /// without a region): two workers in rack `r1` of different zones would look co-located.
    #[error(
        "worker label `{label}` needs `{missing}` too: a {label} is named within its {missing}"
    )]
    Orphan {
        /// The narrower label given.
        label: &'static str,
        /// The wider label missing.
        missing: &'static str,
    },
    /// Measured latencies do not grow with distance (or one is zero). Measure again: a nearer
    /// level can never be slower than a farther one on average.
    #[error("latencies must be positive and grow with distance, got {latencies:?}")]
    Latencies {
        /// The latencies given: same rack, same zone, same region, remote.
        latencies: [Duration; 4],
    },
}

/// Where a worker is: its region, zone and rack, each optional.
///
/// A zone is only meaningful inside its region and a rack inside its zone: two workers share a
/// rack only if they have the same region, zone and rack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Place {
    region: Option<String>,
    zone: Option<String>,
    rack: Option<String>,
}

impl Place {
    /// A place with no labels: it shares nothing with any other worker.
    pub fn unknown() -> Place {
        Place::default()
    }

    /// A place in `region`, `zone` and `rack`.
    pub fn new(
        region: impl Into<String>,
        zone: impl Into<String>,
        rack: impl Into<String>,
    ) -> Place {
        Place {
            region: Some(region.into()),
            zone: Some(zone.into()),
            rack: Some(rack.into()),
        }
    }

    /// Reads a place from a worker's labels. Labels other than [`TOPOLOGY_LABELS`] are ignored,
    /// except those that look like a topology level under another name (see
    /// [`TopologyError::Unknown`]), which are refused; so are a topology label that is not a
    /// non-empty string, and a rack without a zone or a zone without a region.
    pub fn from_labels(labels: &Map<String, Value>) -> Result<Place, TopologyError> {
        if let Some((label, meant)) = labels
            .keys()
            .find_map(|k| misnamed(k).map(|meant| (k.clone(), meant)))
        {
            return Err(TopologyError::Unknown { label, meant });
        }
        let read = |label: &str| -> Result<Option<String>, TopologyError> {
            match labels.get(label) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Err(TopologyError::Empty {
                    label: label.to_owned(),
                }),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(TopologyError::NotAString {
                    label: label.to_owned(),
                    found: json_type(other),
                }),
            }
        };
        let place = Place {
            region: read("region")?,
            zone: read("zone")?,
            rack: read("rack")?,
        };
        if place.rack.is_some() && place.zone.is_none() {
            return Err(TopologyError::Orphan {
                label: "rack",
                missing: "zone",
            });
        }
        if place.zone.is_some() && place.region.is_none() {
            return Err(TopologyError::Orphan {
                label: "zone",
                missing: "region",
            });
        }
        Ok(place)
    }

    /// The region label, if any.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The zone label, if any.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// The rack label, if any.
    pub fn rack(&self) -> Option<&str> {
        self.rack.as_deref()
    }
}

/// The topology label `key` most likely means, if it is not one but looks like one: a known
/// label in other case, plural or with a prefix, or a usual name for a level.
fn misnamed(key: &str) -> Option<&'static str> {
    if TOPOLOGY_LABELS.contains(&key) {
        return None;
    }
    let k = key.to_ascii_lowercase().replace(['-', '.', '/'], "_");
    let k = k
        .strip_prefix("topology_")
        .or_else(|| k.strip_prefix("quark_"))
        .unwrap_or(&k);
    let k = k.strip_suffix('s').unwrap_or(k);
    match k {
        "region" | "geo" => Some("region"),
        "zone" | "az" | "availability_zone" | "datacenter" | "data_center" | "dc" => Some("zone"),
        "rack" | "rack_id" | "row" => Some("rack"),
        _ => None,
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// How far apart two pieces of live state are: the narrowest level their workers share.
/// Ordered from nearest to farthest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Distance {
    /// On one worker: a message continues in memory.
    SameWorker,
    /// On two workers in one rack.
    SameRack,
    /// In one zone, different racks (or a rack label missing).
    SameZone,
    /// In one region, different zones (or a zone label missing).
    SameRegion,
    /// Different regions, or a region label missing on either side.
    Remote,
}

impl Distance {
    /// Every distance, nearest first.
    pub const ALL: [Distance; 5] = [
        Distance::SameWorker,
        Distance::SameRack,
        Distance::SameZone,
        Distance::SameRegion,
        Distance::Remote,
    ];
}

/// The distance between state on a worker at `a` and state on a worker at `b`; `same_worker`
/// says whether the two workers are one.
///
/// A label missing on either side counts as different from that level on: with no labels at all,
/// two workers are [`Distance::Remote`]. Guessing that unlabelled workers are near would pull
/// state together across what may be a region boundary.
pub fn distance(a: &Place, b: &Place, same_worker: bool) -> Distance {
    if same_worker {
        return Distance::SameWorker;
    }
    let same =
        |x: &Option<String>, y: &Option<String>| matches!((x, y), (Some(x), Some(y)) if x == y);
    if !same(&a.region, &b.region) {
        Distance::Remote
    } else if !same(&a.zone, &b.zone) {
        Distance::SameRegion
    } else if !same(&a.rack, &b.rack) {
        Distance::SameZone
    } else {
        Distance::SameRack
    }
}

/// The cost of one unit of traffic (one message, or its equivalent in bytes) at each distance.
///
/// The defaults are 0, 1, 2, 4 and 8. A message that stays on its worker continues in memory and
/// costs nothing. Every other message goes through the database's queue and usually rebuilds
/// state on the receiving side; that fixed part is the same at every distance, and the network
/// hops add to it. Doubling per level says that one message across regions is worth avoiding as
/// much as two across zones, which matches the usual ratio of round-trip times (sub-millisecond in
/// a rack, about a millisecond across zones, tens across regions) damped by the fixed queue cost.
/// A deployment that measured its latencies sets them with [`Costs::from_latencies`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    /// Cost of a unit between two workers in one rack.
    pub same_rack: f64,
    /// Cost of a unit between two racks of one zone.
    pub same_zone: f64,
    /// Cost of a unit between two zones of one region.
    pub same_region: f64,
    /// Cost of a unit between regions (or workers whose region is unknown).
    pub remote: f64,
}

impl Default for Costs {
    fn default() -> Self {
        Costs {
            same_rack: 1.0,
            same_zone: 2.0,
            same_region: 4.0,
            remote: 8.0,
        }
    }
}

impl Costs {
    /// Costs that do not depend on topology: every cross-worker unit costs 1. Minimising them
    /// minimises cross-worker traffic.
    pub fn flat() -> Costs {
        Costs {
            same_rack: 1.0,
            same_zone: 1.0,
            same_region: 1.0,
            remote: 1.0,
        }
    }

    /// Costs proportional to measured mean latencies of a message at each distance (same rack,
    /// same zone, same region, remote), scaled so that a same-rack unit costs 1. The latencies
    /// must be positive and non-decreasing.
    pub fn from_latencies(
        same_rack: Duration,
        same_zone: Duration,
        same_region: Duration,
        remote: Duration,
    ) -> Result<Costs, TopologyError> {
        let latencies = [same_rack, same_zone, same_region, remote];
        if same_rack.is_zero() || latencies.windows(2).any(|w| w[0] > w[1]) {
            return Err(TopologyError::Latencies { latencies });
        }
        let unit = same_rack.as_secs_f64();
        Ok(Costs {
            same_rack: 1.0,
            same_zone: same_zone.as_secs_f64() / unit,
            same_region: same_region.as_secs_f64() / unit,
            remote: remote.as_secs_f64() / unit,
        })
    }

    /// The cost of one unit at `distance`.
    pub fn of(&self, distance: Distance) -> f64 {
        match distance {
            Distance::SameWorker => 0.0,
            Distance::SameRack => self.same_rack,
            Distance::SameZone => self.same_zone,
            Distance::SameRegion => self.same_region,
            Distance::Remote => self.remote,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test labels are objects"),
        }
    }

    #[test]
    fn it_reads_a_place_from_labels_and_ignores_others() {
        let place =
            Place::from_labels(&labels(json!({"region": "eu", "zone": "eu-1a", "team": 7})))
                .unwrap();
        assert_eq!(place.region(), Some("eu"));
        assert_eq!(place.zone(), Some("eu-1a"));
        assert_eq!(place.rack(), None);
    }

    #[test]
    fn it_refuses_a_label_that_is_not_a_string_and_names_it() {
        let err = Place::from_labels(&labels(json!({"region": "eu", "rack": 12}))).unwrap_err();
        assert_eq!(
            err,
            TopologyError::NotAString {
                label: "rack".into(),
                found: "a number"
            }
        );
        assert_eq!(
            err.to_string(),
            "worker label `rack` must be a string, found a number"
        );
        let err = Place::from_labels(&labels(json!({"zone": ""}))).unwrap_err();
        assert_eq!(
            err,
            TopologyError::Empty {
                label: "zone".into()
            }
        );
    }

    #[test]
    fn it_refuses_topology_labels_it_does_not_know_and_levels_without_their_parent() {
        for (label, meant) in [
            ("Zone", "zone"),
            ("zones", "zone"),
            ("availability-zone", "zone"),
            ("dc", "zone"),
            ("topology.region", "region"),
            ("RACK", "rack"),
        ] {
            let err =
                Place::from_labels(&labels(json!({ "region": "eu", label: "x" }))).unwrap_err();
            assert_eq!(
                err,
                TopologyError::Unknown {
                    label: label.into(),
                    meant
                },
                "{label}"
            );
        }
        assert!(Place::from_labels(&labels(json!({"team": "payments", "host": "h1"}))).is_ok());
        let err = Place::from_labels(&labels(json!({"rack": "r1"}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "worker label `rack` needs `zone` too: a rack is named within its zone"
        );
        assert_eq!(
            Place::from_labels(&labels(json!({"zone": "a"}))).unwrap_err(),
            TopologyError::Orphan {
                label: "zone",
                missing: "region"
            }
        );
    }

    #[test]
    fn it_measures_distance_by_the_narrowest_shared_level() {
        let a = Place::new("eu", "a", "r1");
        assert_eq!(distance(&a, &a, true), Distance::SameWorker);
        assert_eq!(distance(&a, &a, false), Distance::SameRack);
        assert_eq!(
            distance(&a, &Place::new("eu", "a", "r2"), false),
            Distance::SameZone
        );
        assert_eq!(
            distance(&a, &Place::new("eu", "b", "r1"), false),
            Distance::SameRegion
        );
        assert_eq!(
            distance(&a, &Place::new("us", "a", "r1"), false),
            Distance::Remote
        );
    }

    #[test]
    fn it_counts_missing_labels_as_different() {
        let full = Place::new("eu", "a", "r1");
        let no_rack = Place {
            rack: None,
            ..full.clone()
        };
        assert_eq!(distance(&full, &no_rack, false), Distance::SameZone);
        assert_eq!(distance(&no_rack, &no_rack, false), Distance::SameZone);
        // A zone name without a region is not trusted: zones are named inside regions.
        let zone_only = Place {
            region: None,
            ..full.clone()
        };
        assert_eq!(distance(&zone_only, &zone_only, false), Distance::Remote);
        assert_eq!(
            distance(&Place::unknown(), &Place::unknown(), false),
            Distance::Remote
        );
        assert_eq!(
            distance(&Place::unknown(), &Place::unknown(), true),
            Distance::SameWorker
        );
    }

    #[test]
    fn it_scales_costs_from_latencies_and_refuses_disorder() {
        let ms = Duration::from_micros;
        let costs = Costs::from_latencies(ms(200), ms(500), ms(1000), ms(30_000)).unwrap();
        assert_eq!(costs.of(Distance::SameWorker), 0.0);
        assert_eq!(costs.of(Distance::SameRack), 1.0);
        assert_eq!(costs.of(Distance::SameZone), 2.5);
        assert_eq!(costs.of(Distance::Remote), 150.0);
        assert!(Costs::from_latencies(ms(500), ms(200), ms(1000), ms(2000)).is_err());
        assert!(Costs::from_latencies(ms(0), ms(200), ms(1000), ms(2000)).is_err());
        let defaults = Costs::default();
        let ordered: Vec<f64> = Distance::ALL.iter().map(|d| defaults.of(*d)).collect();
        assert_eq!(ordered, vec![0.0, 1.0, 2.0, 4.0, 8.0]);
    }
}
