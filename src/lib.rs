//! seedconv: how language models trained under different random seeds
//! converge and diverge over training (Fehlauer, Mahowald, Pimentel, 2025).
//!
//! The floors, bottom up (`tests/testsuite/layers.rs` checks them):
//! - `error`, `table` (Parquet), `frame` (Parquet to polars and back),
//!   `config` (typed `pipeline.toml`);
//! - `engine`: the content-addressed, incremental stage runner; it knows
//!   nothing of language models;
//! - libraries: `text` (documents, PoS, tagger), `lm` (model, training,
//!   ONNX, evaluation), `analysis` (divergence, statistics, phases,
//!   conditioning variables), `render` (charts, documents), `suite`
//!   (checkpoints and the built-in naming scheme);
//! - `stages`: the science, one module per stage, listed in one registry;
//! - `cli` (clap definitions), `commands` (what each command does, `bench` among them).

pub mod analysis;
pub mod cli;
pub mod commands;
pub mod config;
pub mod engine;
pub mod error;
pub mod frame;
pub mod lm;
pub mod render;
pub mod stages;
pub mod suite;
pub mod table;
pub mod text;
