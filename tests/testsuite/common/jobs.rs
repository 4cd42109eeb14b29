//! Two tiny engine jobs for the engine's own tests: `Upper` copies its
//! input upper-cased, `Count` counts the characters of `upper[a]`'s output.

use std::path::PathBuf;

use seedconv::engine::{Job, JobCtx};
use seedconv::error::StageError;
use serde_json::json;

pub struct Upper(pub PathBuf);

impl Job for Upper {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let s = std::fs::read_to_string(&self.0).map_err(|e| StageError::io(&self.0, e))?;
        std::fs::write(ctx.out.join("upper.txt"), s.to_uppercase())
            .map_err(|e| StageError::io(ctx.out, e))?;
        Ok(json!({ "chars": s.len() }))
    }
}

pub struct Count;

impl Job for Count {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let up = ctx.upstream("upper", "a")?.join("upper.txt");
        let n = std::fs::read_to_string(&up)
            .map_err(|e| StageError::io(&up, e))?
            .len();
        std::fs::write(ctx.out.join("count.txt"), n.to_string())
            .map_err(|e| StageError::io(ctx.out, e))?;
        Ok(serde_json::Value::Null)
    }
}
