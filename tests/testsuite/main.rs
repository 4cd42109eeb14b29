//! The integration tests: one binary (as cargo's and ripgrep's), one module
//! per area, so the crate is linked once. They drive the real `seedconv`
//! binary on micro projects built from the shipped data (`common`).

mod common;

mod aggregate;
mod annotate;
mod blimp;
mod cache;
mod cli;
mod compare;
mod dist;
mod docs;
mod drift;
mod engine;
mod executor;
mod explore;
mod fetch;
mod first_contact;
mod icl;
mod init;
mod keys;
mod labels;
mod layers;
mod mlm;
mod report;
mod robustness;
mod seeds;
mod slurm;
mod suites;
mod train;
mod workflow;
