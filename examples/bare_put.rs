//! The reference for `bench/swift-store.sh`: plain PUTs of `count` objects of `size` bytes at
//! `concurrency`, with nothing else around them (no SMTP, no metadata, no verification),
//! over one keep-alive client. Prints objects per second.
//!
//! ```text
//! bare_put native AUTHURL USER KEY CONTAINER SIZE COUNT CONCURRENCY
//! bare_put s3 ENDPOINT ACCESS_KEY SECRET BUCKET SIZE COUNT CONCURRENCY
//! ```

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use futures::stream::{self, StreamExt};
use object_store::ObjectStoreExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 8 {
        bail!("usage: bare_put native|s3 URL USER KEY CONTAINER SIZE COUNT CONCURRENCY");
    }
    let size: usize = args[5].parse().context("SIZE")?;
    let count: usize = args[6].parse().context("COUNT")?;
    let concurrency: usize = args[7].parse().context("CONCURRENCY")?;
    let body = bytes::Bytes::from(vec![b'x'; size]);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let started;
    // Both clients take rustls' process-wide crypto provider, as swiftdrop's do.
    swiftdrop::store::install_tls_provider();
    match args[0].as_str() {
        "native" => {
            let client = swiftdrop::store::http_client().build().unwrap();
            let auth = client
                .get(&args[1])
                .header("X-Auth-User", &args[2])
                .header("X-Auth-Key", &args[3])
                .send()
                .await?
                .error_for_status()?;
            let token = auth.headers()["x-auth-token"].to_str()?.to_string();
            let url = auth.headers()["x-storage-url"].to_str()?.to_string();
            let base = Arc::new(format!("{url}/{}", args[4]));
            started = Instant::now();
            let puts = stream::iter(0..count).map(|i| {
                let (client, token, base, body) =
                    (client.clone(), token.clone(), base.clone(), body.clone());
                let run = run.clone();
                async move {
                    client
                        .put(format!("{base}/bench/{run}/{i}"))
                        .header("X-Auth-Token", token)
                        .header("Content-Length", body.len())
                        .body(body)
                        .send()
                        .await?
                        .error_for_status()?;
                    anyhow::Ok(())
                }
            });
            let results: Vec<_> = puts.buffer_unordered(concurrency).collect().await;
            results.into_iter().collect::<Result<Vec<_>, _>>()?;
        }
        "s3" => {
            let store = Arc::new(
                AmazonS3Builder::new()
                    .with_endpoint(&args[1])
                    .with_allow_http(true)
                    .with_region("us-east-1")
                    .with_access_key_id(&args[2])
                    .with_secret_access_key(&args[3])
                    .with_bucket_name(&args[4])
                    .build()?,
            );
            started = Instant::now();
            let puts = stream::iter(0..count).map(|i| {
                let (store, body, run) = (store.clone(), body.clone(), run.clone());
                async move {
                    store
                        .put(&Path::from(format!("bench/{run}/{i}")), body.into())
                        .await?;
                    anyhow::Ok(())
                }
            });
            let results: Vec<_> = puts.buffer_unordered(concurrency).collect().await;
            results.into_iter().collect::<Result<Vec<_>, _>>()?;
        }
        other => bail!("{other}: expected native or s3"),
    }
    println!("{:.0}", count as f64 / started.elapsed().as_secs_f64());
    Ok(())
}
