//! `explore`: a local, read-only web viewer over the config's tables — the
//! evaluation text shaded by how much the seeds disagree at a (size, step),
//! each seed's predictions for a token, the most divergent tokens and a
//! token's divergence over training. It reads the current entries' Parquet
//! tables on demand and computes nothing a stage computes.

mod catalog;
mod data;
mod http;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{anyhow, Result};

pub use catalog::Catalog;
pub use data::Explorer;
pub use http::route;

use super::Session;
use crate::cli::ExploreArgs;

pub fn explore(s: &Session, args: &ExploreArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let ex = Arc::new(Explorer::open(Catalog::from_session(s)?)?);
    let addr = SocketAddr::new(args.host, args.port);
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow!("explore: cannot listen on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow!("explore: not listening on an IP address"))?;
    if !args.host.is_loopback() {
        eprintln!(
            "WARNING: explore is serving this store's tables to the network on {bound}: \
             anyone who can reach this address can read them (no authentication). \
             Leave out --host to serve this machine only."
        );
    }
    let host = if args.host.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        bound.ip().to_string()
    };
    let url = match bound.ip() {
        IpAddr::V6(_) if !args.host.is_unspecified() => {
            format!("http://[{host}]:{}/", bound.port())
        }
        _ => format!("http://{host}:{}/", bound.port()),
    };
    // Tests and scripts read this line for the port.
    println!("explore: {url} (read-only; Ctrl-C stops)");
    tracing::info!(
        "explore: {} tables, {} sizes, opened in {:.2} s",
        ex.catalog().tables().count(),
        ex.sizes.len(),
        t0.elapsed().as_secs_f64()
    );
    if args.open {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        if let Err(e) = std::process::Command::new(opener).arg(&url).spawn() {
            tracing::warn!("explore: could not start {opener} ({e}); open {url} yourself");
        }
    }
    http::serve(ex, Arc::new(server), s.engine.cancel.clone(), args.threads);
    Ok(())
}

/// A viewer over a folder of `<stage>/<table>.parquet` (the benchmark's
/// synthetic stores); answers through [`route`].
pub fn open_dir(dir: &std::path::Path) -> Result<Explorer> {
    Explorer::open(Catalog::from_dir(dir)?)
}
