//! PlaceBench's command line.

use std::path::PathBuf;

use crate::workload::Kind;

pub(crate) const USAGE: &str = "cargo bench -p quark-worker --bench placebench -- [options]
  --quick      10,000 instances, k = 4 and 8 (default: 100,000 instances, k = 4, 8, 16)
  --out DIR    write SVG plots to DIR (a relative path is taken from the workspace root)
  --seed N     the seed (default 42)
  --workload W run only workload W (communities, reshuffle, hubs, ramp, leak, topology, control)
  --k K        run only k = K workers
  --min-gain X, --min-relative-gain X
               Quark's noise guard (default 24 and 0.5; see partition::Options)
  --sample-one-in N
               the learning policies' sketches record one message in N (default 4)
  --decay F    the sketches' weights are multiplied by F at each repartition call
               (default 0.5: a half-life of one call)";

/// What a run of PlaceBench was asked for.
pub(crate) struct Args {
    pub(crate) quick: bool,
    pub(crate) out: Option<PathBuf>,
    pub(crate) seed: u64,
    pub(crate) min_gain: f64,
    pub(crate) min_relative_gain: f64,
    pub(crate) workload: Option<Kind>,
    pub(crate) k: Option<usize>,
    /// The sketches record one message in this many.
    pub(crate) sample_one_in: u64,
    /// The sketches' weights are multiplied by this at each repartition call.
    pub(crate) decay: f64,
}

/// The arguments, or a message saying what is wrong with them (the usage for `--help`).
pub(crate) fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        out: None,
        seed: 42,
        min_gain: 24.0,
        min_relative_gain: 0.5,
        workload: None,
        k: None,
        sample_one_in: 4,
        decay: 0.5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--out" => {
                let dir = PathBuf::from(it.next().ok_or("--out needs a directory")?);
                // cargo runs benches in the package's directory; a relative path is meant from
                // the workspace root, where the command is typed.
                args.out = Some(if dir.is_relative() {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("..")
                        .join(dir)
                } else {
                    dir
                });
            }
            "--seed" => args.seed = value(&mut it, "--seed needs a number", |_| true)?,
            "--min-gain" => args.min_gain = value(&mut it, "--min-gain needs a number", |_| true)?,
            "--min-relative-gain" => {
                args.min_relative_gain =
                    value(&mut it, "--min-relative-gain needs a number", |_| true)?
            }
            "--workload" => {
                let name = it.next().ok_or("--workload needs a name")?;
                args.workload = Some(
                    Kind::ALL
                        .into_iter()
                        .find(|k| k.name() == name)
                        .ok_or_else(|| format!("unknown workload `{name}`\n{USAGE}"))?,
                );
            }
            "--k" => args.k = Some(value(&mut it, "--k needs a positive number", |&k| k > 0)?),
            "--sample-one-in" => {
                args.sample_one_in =
                    value(&mut it, "--sample-one-in needs a positive number", |&n| {
                        n > 0
                    })?
            }
            "--decay" => {
                args.decay = value(&mut it, "--decay needs a number in (0, 1]", |&f| {
                    f > 0.0 && f <= 1.0
                })?
            }
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(args)
}

/// The next argument as a `T` that `valid` accepts, or `error`.
fn value<T: std::str::FromStr>(
    it: &mut impl Iterator<Item = String>,
    error: &str,
    valid: impl Fn(&T) -> bool,
) -> Result<T, String> {
    it.next()
        .and_then(|s| s.parse().ok())
        .filter(|v| valid(v))
        .ok_or_else(|| error.to_string())
}
