//! Lists the messages waiting under `cur/` in every configured destination, oldest first,
//! through the same `ObjectStore` interface the filter writes with.
//!
//!     cargo run --example list_stored -- [--config FILE]
//!
//! Uses the same configuration as `swiftdrop serve` (environment and optional ini file).

use futures::TryStreamExt;
use object_store::path::Path;
use swiftdrop::config::Config;
use swiftdrop::store::Destination;
use swiftdrop::store::key::{CUR, MessageKey};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = match args.as_slice() {
        [] => None,
        [flag, file] if flag == "--config" => Some(std::path::PathBuf::from(file)),
        _ => anyhow::bail!("usage: list_stored [--config FILE]"),
    };
    let config = Config::load(file.as_deref())?;
    let now = chrono::Utc::now().timestamp() as u64;
    for dest in Destination::open_all(&config.destinations)? {
        let mut objects: Vec<_> = dest
            .store
            .list(Some(&Path::from(CUR)))
            .try_collect()
            .await?;
        objects.sort_by_key(|o| o.location.to_string());
        println!(
            "[{}] {} message(s) in {}",
            dest.name,
            objects.len(),
            dest.store
        );
        for object in objects {
            let name = object.location.filename().unwrap_or_default();
            match MessageKey::parse(name) {
                Some(key) => println!(
                    "  {name}  {} bytes, stored {}s ago by {} (pid {})",
                    key.size,
                    now.saturating_sub(key.secs),
                    key.host,
                    key.pid
                ),
                None => println!("  {name}  (not a swiftdrop name, {} bytes)", object.size),
            }
        }
    }
    Ok(())
}
