//! Finding and loading the ONNX Runtime shared library.
//!
//! seedconv uses `ort` with `load-dynamic`: nothing is linked or downloaded
//! at build time. The library comes from the PyPI `onnxruntime` wheel
//! (`scripts/fetch_ort.py`) and is found, in order, at `$ORT_DYLIB_PATH`, at
//! `.ort/libonnxruntime.so` in the working folder or one of its ancestors,
//! and at `.ort/` in the source tree the binary was built from.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();

/// The ONNX Runtime version this build expects (`ort` feature `api-31`).
pub const ORT_VERSION: &str = "1.31.1";
pub const FIX: &str = "python3 scripts/fetch_ort.py (in the seedconv source folder), or set ORT_DYLIB_PATH=/path/to/libonnxruntime.so.1.31.1";

#[derive(Debug, thiserror::Error)]
pub enum OrtLibError {
    #[error("ONNX Runtime library not found (ORT_DYLIB_PATH unset, no .ort/libonnxruntime.so); fix: {FIX}")]
    NotFound,
    #[error("ORT_DYLIB_PATH={0} does not exist; fix: {FIX}")]
    EnvMissing(String),
    #[error("cannot use ONNX Runtime at {path}: {message}; fix: {FIX}")]
    Load { path: String, message: String },
}

/// Where the library would be loaded from.
pub fn locate() -> Result<PathBuf, OrtLibError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.exists() {
            Ok(p)
        } else {
            Err(OrtLibError::EnvMissing(p.display().to_string()))
        };
    }
    let rel = Path::new(".ort").join("libonnxruntime.so");
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            if dir.join(&rel).exists() {
                return Ok(dir.join(&rel));
            }
        }
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(&rel);
    if built.exists() {
        return Ok(built);
    }
    Err(OrtLibError::NotFound)
}

/// The process-wide ONNX Runtime environment (loading the library first).
pub fn env() -> Result<&'static ort::environment::Environment, OrtLibError> {
    init()?;
    Ok(ENV.get().expect("initialised by init"))
}

/// The loaded ONNX Runtime's build info (version and commit), for
/// provenance; empty before the library is loaded.
pub fn info() -> String {
    if ENV.get().is_none() {
        return String::new();
    }
    // The library's file name carries its version (libonnxruntime.so.1.31.1).
    let version = locate()
        .ok()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| Some(p.file_name()?.to_str()?.split(".so.").nth(1)?.to_string()))
        .unwrap_or_else(|| "?".into());
    format!("{version}; {}", ort::info())
}

/// Names of the CUDA devices this process sees, in CUDA's numbering (the
/// entries of `CUDA_VISIBLE_DEVICES` when set, else every GPU `nvidia-smi`
/// lists); empty without a GPU or the driver's tool.
pub fn visible_gpus() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let query = |dev: Option<&str>| -> Vec<String> {
            let mut cmd = std::process::Command::new("nvidia-smi");
            cmd.args(["--query-gpu=name", "--format=csv,noheader"]);
            if let Some(d) = dev {
                cmd.args(["-i", d]);
            }
            cmd.output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        match std::env::var("CUDA_VISIBLE_DEVICES") {
            Ok(v) => v
                .split(',')
                .map(str::trim)
                .take_while(|d| !d.is_empty() && !d.starts_with('-'))
                .filter_map(|d| query(Some(d)).into_iter().next())
                .collect(),
            Err(_) => query(None),
        }
    })
}

/// The name of the GPU a CUDA session runs on: device `device` (default 0,
/// as ONNX Runtime picks it) of those visible; None when not on CUDA or
/// where the driver's tool cannot say.
pub fn gpu_name(cuda: bool, device: Option<u32>) -> Option<String> {
    if !cuda {
        return None;
    }
    visible_gpus().get(device.unwrap_or(0) as usize).cloned()
}

/// Load the library once per process and return its path and build info.
pub fn init() -> Result<(PathBuf, String), OrtLibError> {
    let path = locate()?;
    let load_err = |message: String| OrtLibError::Load {
        path: path.display().to_string(),
        message: message.replace('\n', " "),
    };
    if ENV.get().is_none() {
        let env = ort::init_from(&path)
            .map_err(|e| load_err(e.to_string()))?
            .with_name("seedconv")
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        let _ = ENV.set(env);
    }
    // Report the file behind the symlink: its name carries the version.
    let real = std::fs::canonicalize(&path).unwrap_or(path);
    Ok((real, ort::info().to_string()))
}
