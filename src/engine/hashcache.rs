//! Memoised blake3 file hashes.
//!
//! A no-op run over thousands of large inputs must not re-read them, so a
//! file's hash is remembered together with its (size, mtime, ctime, inode)
//! and reused while all four are unchanged. ctime is included because a user
//! can restore mtime (`touch -d`) but not ctime. The memo is one JSON file in
//! the store, written atomically; losing it only costs re-hashing.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::fsutil::write_atomic;
use crate::error::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            ino: meta.ino(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Memo {
    stamp: Stamp,
    hash: String,
}

/// Thread-safe memo of file hashes, persisted in `<store>/.cache/filehash.json`.
pub struct HashCache {
    path: PathBuf,
    map: Mutex<HashMap<PathBuf, Memo>>,
    dirty: Mutex<bool>,
}

impl HashCache {
    pub fn open(store: &Path) -> HashCache {
        let path = store.join(".cache").join("filehash.json");
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        HashCache {
            path,
            map: Mutex::new(map),
            dirty: Mutex::new(false),
        }
    }

    /// Hash of `path`, from the memo when its stamp is unchanged.
    pub fn hash(&self, path: &Path) -> Result<String, EngineError> {
        let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
        let stamp = Stamp::of(&meta);
        if let Some(m) = self.map.lock().unwrap().get(path) {
            if m.stamp == stamp {
                return Ok(m.hash.clone());
            }
        }
        let hash = hash_file(path)?;
        self.remember(path, stamp, &hash);
        Ok(hash)
    }

    /// Record a hash computed elsewhere (e.g. while writing an artefact).
    pub fn remember(&self, path: &Path, stamp: Stamp, hash: &str) {
        self.map.lock().unwrap().insert(
            path.to_path_buf(),
            Memo {
                stamp,
                hash: hash.to_string(),
            },
        );
        *self.dirty.lock().unwrap() = true;
    }

    /// Write the memo back if it changed. Concurrent runs may overwrite each
    /// other's additions; that only costs a later re-hash.
    pub fn save(&self) -> Result<(), EngineError> {
        if !*self.dirty.lock().unwrap() {
            return Ok(());
        }
        let map = self.map.lock().unwrap();
        // Forget files that no longer exist so the memo does not grow forever.
        let live: HashMap<&PathBuf, &Memo> = map.iter().filter(|(p, _)| p.exists()).collect();
        let bytes = serde_json::to_vec(&live).expect("memo serialises");
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        }
        write_atomic(&self.path, &bytes)
    }
}

/// blake3 of a file's bytes, memory-mapped and hashed on all cores for large
/// files (blake3's `update_mmap_rayon` falls back to reads for small ones).
pub fn hash_file(path: &Path) -> Result<String, EngineError> {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path)
        .map_err(|e| EngineError::io(path, e))?;
    Ok(h.finalize().to_hex().to_string())
}
