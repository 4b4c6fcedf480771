//! The options: command line, environment, defaults.

use anyhow::{Context, Result, anyhow, bail, ensure};

const USAGE: &str = "\
usage: cargo bench -p quark-history --bench journal [-- OPTIONS]

Every option can also be set by environment variable QUARK_BENCH_<NAME> (upper case, `-` as `_`),
e.g. QUARK_BENCH_APPENDS=20000. Command-line options win.

  --appends N         single-event appends per append test, and baseline transactions  [5000]
  --concurrency N     tasks (and pgbench clients) in the concurrent append test         [8]
  --batch N           events per commit in the batched append test                      [50]
  --batch-commits N   commits in the batched append test                                [200]
  --tasks N           activity tasks enqueued, then claimed and completed               [5000]
  --enqueue-chunk N   tasks per enqueue commit                                          [500]
  --workers N         concurrent claim + complete loops                                 [4]
  --claim-limit N     tasks per claim                                                   [64]
  --warmup N          untimed appends before the timed ones, per backend                [400]
  --backend B         sqlite, postgres or both                                          [both]
  --help              this text

PostgreSQL: QUARK_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) names the
server; a fresh database is created on it and dropped at the end. pgbench is looked up in
QUARK_BENCH_PGBENCH, then PATH, then /usr/lib/postgresql/*/bin.";

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) appends: u64,
    pub(crate) concurrency: usize,
    pub(crate) batch: usize,
    pub(crate) batch_commits: u64,
    pub(crate) tasks: u64,
    pub(crate) enqueue_chunk: usize,
    pub(crate) workers: usize,
    pub(crate) claim_limit: u32,
    pub(crate) warmup: u64,
    pub(crate) sqlite: bool,
    pub(crate) postgres: bool,
}

impl Config {
    pub(crate) fn from_env_and_args() -> Result<Config> {
        let mut cfg = Config {
            appends: 5_000,
            concurrency: 8,
            batch: 50,
            batch_commits: 200,
            tasks: 5_000,
            enqueue_chunk: 500,
            workers: 4,
            claim_limit: 64,
            warmup: 400,
            sqlite: true,
            postgres: true,
        };
        let names = [
            "appends",
            "concurrency",
            "batch",
            "batch-commits",
            "tasks",
            "enqueue-chunk",
            "workers",
            "claim-limit",
            "warmup",
            "backend",
        ];
        for name in names {
            let var = format!("QUARK_BENCH_{}", name.to_uppercase().replace('-', "_"));
            if let Ok(value) = std::env::var(&var) {
                cfg.set(name, &value)
                    .with_context(|| format!("in ${var}"))?;
            }
        }
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // `cargo bench` passes `--bench`; a bare word would be a name filter, which this
            // binary does not have.
            if arg == "--bench" || !arg.starts_with("--") {
                continue;
            }
            let (name, value) = match arg[2..].split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| anyhow!("{arg} needs a value\n\n{USAGE}"))?;
                    (arg[2..].to_string(), value)
                }
            };
            if !names.contains(&name.as_str()) {
                bail!("unknown option --{name}\n\n{USAGE}");
            }
            cfg.set(&name, &value)
                .with_context(|| format!("in --{name}"))?;
        }
        ensure!(
            cfg.appends > 0
                && cfg.concurrency > 0
                && cfg.batch > 0
                && cfg.batch_commits > 0
                && cfg.tasks > 0
                && cfg.enqueue_chunk > 0
                && cfg.workers > 0
                && cfg.claim_limit > 0,
            "sizes must be positive"
        );
        ensure!(
            cfg.appends >= cfg.concurrency as u64,
            "--appends must be at least --concurrency"
        );
        Ok(cfg)
    }

    fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let n = || -> Result<u64> {
            value
                .trim()
                .replace('_', "")
                .parse::<u64>()
                .map_err(|e| anyhow!("`{value}`: {e}"))
        };
        match name {
            "appends" => self.appends = n()?,
            "concurrency" => self.concurrency = n()? as usize,
            "batch" => self.batch = n()? as usize,
            "batch-commits" => self.batch_commits = n()?,
            "tasks" => self.tasks = n()?,
            "enqueue-chunk" => self.enqueue_chunk = n()? as usize,
            "workers" => self.workers = n()? as usize,
            "claim-limit" => self.claim_limit = u32::try_from(n()?)?,
            "warmup" => self.warmup = n()?,
            "backend" => match value {
                "sqlite" => (self.sqlite, self.postgres) = (true, false),
                "postgres" => (self.sqlite, self.postgres) = (false, true),
                "both" => (self.sqlite, self.postgres) = (true, true),
                _ => bail!("`{value}`: expected sqlite, postgres or both"),
            },
            _ => bail!("unknown option {name}"),
        }
        Ok(())
    }

    /// Per-client operation counts for `clients` clients sharing `total` operations.
    pub(crate) fn split(total: u64, clients: usize) -> u64 {
        (total / clients as u64).max(1)
    }
}
