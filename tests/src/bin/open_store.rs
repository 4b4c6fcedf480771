//! Opens the store at `QUARK_DATABASE_URL` (applying the migrations, as every worker does at its
//! start) and exits: the concurrent start-up test runs many at once on a fresh database.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("QUARK_DATABASE_URL")?;
    quark_worker::cli::open_store(Some(&url)).await?;
    Ok(())
}
