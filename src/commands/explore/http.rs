//! The viewer's HTTP surface: one page, a few JSON endpoints and the
//! config's Parquet tables by name. GET and HEAD only; every path not listed
//! here is a 404 (logged), and a table is found by (stage, name) in the
//! catalog, never by joining a request onto a path.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

use super::data::{measure, ApiError, Explorer, PAGE, VARIABLES};

const PAGE_HTML: &str = include_str!("page.html");

pub enum Body {
    Bytes(Vec<u8>),
    File(File),
}

pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Body,
}

impl Reply {
    fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: Body::Bytes(serde_json::to_vec(v).expect("JSON")),
        }
    }
    fn error(e: &ApiError) -> Reply {
        Reply::json(e.status(), &json!({ "error": e.message() }))
    }
    fn not_found(method: &str, url: &str, why: &str) -> Reply {
        tracing::warn!("explore: 404 for {method} {url}: {why}");
        Reply::json(404, &json!({ "error": format!("not found: {why}") }))
    }
    /// The body as text (tests and the benchmark).
    pub fn text(&self) -> String {
        match &self.body {
            Body::Bytes(b) => String::from_utf8_lossy(b).to_string(),
            Body::File(_) => String::new(),
        }
    }
}

/// The query's parameters; one given twice, or one this endpoint does not
/// take, is a 400.
fn params(query: &str, known: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if !known.contains(&k.as_ref()) && !VARIABLES.contains(&k.as_ref()) {
            return Err(ApiError::Bad(format!(
                "unknown parameter {k:?} (this endpoint takes {}, and filters {})",
                known.join(", "),
                VARIABLES.join(", ")
            )));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ApiError::Bad(format!("parameter {k:?} given twice")));
        }
    }
    Ok(out)
}

fn get<'a>(p: &'a BTreeMap<String, String>, k: &str) -> Result<&'a str, ApiError> {
    p.get(k)
        .map(String::as_str)
        .ok_or_else(|| ApiError::Bad(format!("missing parameter {k:?}")))
}

fn number<T: std::str::FromStr>(
    p: &BTreeMap<String, String>,
    k: &str,
    default: Option<T>,
) -> Result<T, ApiError> {
    match (p.get(k), default) {
        (None, Some(d)) => Ok(d),
        (None, None) => Err(ApiError::Bad(format!("missing parameter {k:?}"))),
        (Some(v), _) => v
            .parse()
            .map_err(|_| ApiError::Bad(format!("parameter {k:?}: {v:?} is not a whole number"))),
    }
}

/// The non-empty filters among the parameters.
fn filters(p: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    p.iter()
        .filter(|(k, v)| VARIABLES.contains(&k.as_str()) && !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn api(ex: &Explorer, path: &str, query: &str) -> Result<Value, ApiError> {
    let at = |p: &BTreeMap<String, String>| -> Result<(usize, u32), ApiError> {
        let size = ex.size_index(get(p, "size")?)?;
        let step = number(p, "step", None)?;
        ex.check_step(size, step)?;
        Ok((size, step))
    };
    // The `measure` parameter; kl when absent.
    let shade =
        |p: &BTreeMap<String, String>| measure(p.get("measure").map_or("kl", String::as_str));
    match path {
        "/api/meta" => {
            params(query, &[])?;
            Ok(ex.meta())
        }
        "/api/text" => {
            let p = params(query, &["size", "step", "measure", "start", "len"])?;
            let (size, step) = at(&p)?;
            let f = filters(&p);
            ex.check_filters(&f)?;
            ex.text(
                size,
                step,
                shade(&p)?,
                number(&p, "start", Some(0))?,
                number(&p, "len", Some(PAGE))?,
                &f,
            )
        }
        "/api/top" => {
            let p = params(query, &["size", "step", "measure", "n"])?;
            let (size, step) = at(&p)?;
            let f = filters(&p);
            ex.check_filters(&f)?;
            ex.top(size, step, shade(&p)?, number(&p, "n", Some(25))?, &f)
        }
        "/api/token" => {
            let p = params(query, &["size", "step", "row"])?;
            let (size, step) = at(&p)?;
            ex.token(size, step, number(&p, "row", None)?)
        }
        "/api/trajectory" => {
            let p = params(query, &["size", "row", "measure"])?;
            let size = ex.size_index(get(&p, "size")?)?;
            ex.trajectory(size, number(&p, "row", None)?, shade(&p)?)
        }
        _ => Err(ApiError::Missing(format!("no endpoint {path}"))),
    }
}

/// What a request gets. Pure but for the files it reads.
pub fn route(ex: &Explorer, method: &str, url: &str) -> Reply {
    if method != "GET" && method != "HEAD" {
        return Reply::json(
            405,
            &json!({ "error": format!("{method}: explore is read-only (GET only)") }),
        );
    }
    let (raw, query) = url.split_once('?').unwrap_or((url, ""));
    let Ok(path) = percent_decode_str(raw).decode_utf8() else {
        return Reply::not_found(method, url, "the path is not UTF-8");
    };
    // Nothing here is a path on disk, but a traversal attempt is worth a
    // line in the log whatever it asks for.
    if !path.starts_with('/')
        || path.split(['/', '\\']).any(|seg| seg == ".." || seg == ".")
        || path.contains('\\')
        || path.contains('\0')
    {
        return Reply::not_found(method, url, "a path that leaves its folder");
    }
    match path.as_ref() {
        "/" | "/index.html" => Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: Body::Bytes(PAGE_HTML.as_bytes().to_vec()),
        },
        "/tables" | "/tables/" => {
            let list: Vec<String> = ex
                .catalog()
                .tables()
                .map(|(s, n)| format!("{s}/{n}"))
                .collect();
            Reply::json(200, &json!({ "tables": list }))
        }
        p if is_endpoint(p) => match api(ex, p, query) {
            Ok(v) => Reply::json(200, &v),
            Err(e) => Reply::error(&e),
        },
        p if p.starts_with("/tables/") => {
            let rest = &p["/tables/".len()..];
            let Some((stage, name)) = rest.split_once('/') else {
                return Reply::not_found(method, url, "not a table of this config");
            };
            match ex.open_table(stage, name) {
                Ok(f) => Reply {
                    status: 200,
                    content_type: "application/vnd.apache.parquet",
                    body: Body::File(f),
                },
                Err(ApiError::Missing(_)) => {
                    Reply::not_found(method, url, "not a table of this config")
                }
                Err(e) => Reply::error(&e),
            }
        }
        _ => Reply::not_found(method, url, "no such page"),
    }
}

fn is_endpoint(p: &str) -> bool {
    matches!(
        p,
        "/api/meta" | "/api/text" | "/api/top" | "/api/token" | "/api/trajectory"
    )
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("ASCII header")
}

fn respond<R: std::io::Read>(
    rq: tiny_http::Request,
    r: tiny_http::Response<R>,
    status: u16,
    headers: [tiny_http::Header; 4],
) -> std::io::Result<()> {
    let mut r = r.with_status_code(status);
    for h in headers {
        r.add_header(h);
    }
    rq.respond(r)
}

/// Answer requests on `threads` threads until `stop` is set.
pub fn serve(
    ex: Arc<Explorer>,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    threads: usize,
) {
    std::thread::scope(|sc| {
        for _ in 0..threads.max(1) {
            let (ex, server, stop) = (ex.clone(), server.clone(), stop.clone());
            sc.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let rq = match server.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(rq)) => rq,
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!("explore: {e}");
                            continue;
                        }
                    };
                    let method = rq.method().as_str().to_string();
                    let t0 = std::time::Instant::now();
                    let reply = route(&ex, &method, rq.url());
                    tracing::debug!(
                        "explore: {} {method} {} in {:.1} ms",
                        reply.status,
                        rq.url(),
                        t0.elapsed().as_secs_f64() * 1e3
                    );
                    let headers = [
                        header("Content-Type", reply.content_type),
                        header("Cache-Control", "no-store"),
                        header("X-Content-Type-Options", "nosniff"),
                        // The page loads nothing from anywhere but here.
                        header(
                            "Content-Security-Policy",
                            "default-src 'none'; script-src 'unsafe-inline'; \
                             style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
                        ),
                    ];
                    let res = match reply.body {
                        Body::Bytes(b) => {
                            respond(rq, tiny_http::Response::from_data(b), reply.status, headers)
                        }
                        Body::File(f) => {
                            respond(rq, tiny_http::Response::from_file(f), reply.status, headers)
                        }
                    };
                    if let Err(e) = res {
                        tracing::debug!("explore: client went away: {e}");
                    }
                }
            });
        }
    });
}
