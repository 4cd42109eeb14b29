//! The science, one module per stage. Each exposes `instances(&Loaded)`, which
//! expands its part of the config into engine instances; `plan` strings them
//! together. Adding a stage means adding a module and one line here.

pub mod aggregate;
pub mod annotate;
pub mod blimp;
pub mod blimp_conv;
pub mod corpus;
pub mod dist;
pub mod frequency;
pub mod icl;
pub mod icl_summary;
pub mod kl;
pub mod report;
pub mod tagger;
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
    instances.extend(tagger::instances(l));
    instances.extend(annotate::instances(l));
    instances.extend(traindata::instances(l));
    instances.extend(train::instances(l));
    if let Some(suite) = crate::suite::from_config(l)? {
        instances.extend(dist::instances(l, &suite));
        instances.extend(kl::instances(l, &suite));
        instances.extend(aggregate::instances(l, &suite));
        instances.extend(blimp::instances(l, &suite));
        instances.extend(blimp_conv::instances(l, &suite));
        instances.extend(icl::instances(l, &suite));
        instances.extend(icl_summary::instances(l, &suite));
        let upstream = instances
            .iter()
            .map(|i| (i.stage, i.label.clone()))
            .collect();
        instances.extend(report::instances(l, &suite, upstream));
    }
    Plan::new(instances).map_err(|e| ConfigError::Plan(format!("{}: {e}", l.file_name())))
}
