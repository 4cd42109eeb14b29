//! seedconv: how language models trained under different random seeds
//! converge and diverge over training (Fehlauer, Mahowald, Pimentel, 2025).
//!
//! Layout: `config` (typed `pipeline.toml`), `engine` (content-addressed,
//! incremental stage runner that knows nothing of language models), `stages`
//! (the science, one module per stage), `cli`/`commands` (the thin CLI).

pub mod analysis;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod doc;
pub mod engine;
pub mod error;
pub mod eval;
pub mod model;
pub mod onnx;
pub mod ortlib;
pub mod plot;
pub mod pos;
pub mod stages;
pub mod suite;
pub mod table;
pub mod tagger;
pub mod text;
pub mod train;
