//! The statistics below the stages: divergences of distributions, summary
//! statistics, the paper's phases of a convergence curve, and the variables
//! convergence is conditioned on, the regression of KL on them. Nothing
//! here reads the store.

pub mod conditioning;
pub mod divergence;
pub mod intervals;
pub mod kernels;
pub mod measures;
pub mod phases;
pub mod regression;
pub mod stats;
