//! The science, one module per stage. Each exposes `instances(&Loaded)`, which
//! expands its part of the config into engine instances; `plan` strings them
//! together. Adding a stage means adding a module and one line here.

pub mod corpus;
pub mod frequency;
pub mod tokenizer;
pub mod train;
pub mod traindata;

use crate::config::Loaded;
use crate::engine::Plan;
use crate::error::ConfigError;

/// Expand a loaded configuration into the plan of stage instances.
pub fn plan(l: &Loaded) -> Result<Plan, ConfigError> {
    let mut instances = Vec::new();
    instances.extend(tokenizer::instances(l));
    instances.extend(corpus::instances(l));
    instances.extend(frequency::instances(l));
    instances.extend(traindata::instances(l));
    instances.extend(train::instances(l));
    Plan::new(instances).map_err(|e| ConfigError::Plan(format!("{}: {e}", l.file_name())))
}
