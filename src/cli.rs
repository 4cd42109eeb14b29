//! Command-line definitions (clap derive). No logic here: `commands` turns
//! these into work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "seedconv",
    version,
    about = "Measure how language models trained under different random seeds converge and diverge over training"
)]
pub struct Cli {
    /// Pipeline file; relative paths in it resolve against its folder.
    #[arg(short, long, global = true, default_value = "pipeline.toml")]
    pub config: PathBuf,
    /// Override a config value, e.g. --set corpus.window=128 --set 'suite.seeds=[1,2]'.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More detail (repeat for debug output).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run what is stale (all stages, or the named ones and their upstream), in order.
    Run(RunArgs),
    /// Every instance: fresh, stale (with the reason) or missing; a summary per stage.
    Status(StatusArgs),
    /// Paths of a stage's current artefacts, one per line, or their Parquet schemas.
    Show(ShowArgs),
    /// Re-hash every stored artefact against its manifest; report corrupted ones.
    Verify(JsonArgs),
    /// Remove store entries that no current plan references.
    Gc(GcArgs),
    /// Print the fully resolved configuration (or, with --reference, every
    /// key there is).
    Config(ConfigArgs),
    /// Check the environment: ONNX Runtime library, store, cores.
    Doctor,
    /// Benchmarks that print a table.
    Bench(BenchArgs),
    /// Write a pipeline.toml for a folder of exported checkpoints.
    Init(InitArgs),
    /// The stage graph with each stage's instance states.
    Dag(DagArgs),
    /// Copy the current tables into a plain folder (one Parquet per table,
    /// the report, provenance.json).
    Export(ExportArgs),
    /// A local, read-only web viewer over the tables: the evaluation text
    /// shaded by how much the seeds disagree, each seed's predictions per
    /// token, the most divergent tokens (127.0.0.1 unless --host).
    Explore(ExploreArgs),
    /// Compare two procedures: E[conv] of pipeline A minus pipeline B per
    /// (size, step), with 95% intervals and p-values (both must have run).
    Compare(CompareArgs),
    /// Print a shell completion script (e.g. `seedconv completions bash > ~/.local/share/bash-completion/completions/seedconv`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Compute one instance of a Slurm run (called by its batch scripts).
    #[command(hide = true)]
    SlurmTask(SlurmTaskArgs),
    /// Train one model of a built-in suite (what a `train` instance runs in
    /// its own process; the job spec arrives as JSON on stdin).
    #[command(hide = true)]
    TrainWorker,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Path template of the exports with {seed}, {step} and, for several
    /// sizes, {size}, e.g. 'models/pythia-{size}-seed{seed}/step{step}/model.onnx'.
    #[arg(long)]
    pub models: String,
    /// The suite's tokenizer.json (default: the one beside the exports).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Evaluation text (default: the shipped UD English EWT test split).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Text for the frequency counts (default: the shipped English text).
    #[arg(long)]
    pub frequency: Vec<PathBuf>,
    /// Overwrite an existing config file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to bring up to date (default: all): STAGE or STAGE:LABEL-GLOB
    /// (e.g. 'dist:d64-seed*-step512'), with what it needs upstream.
    pub stages: Vec<String>,
    /// Also everything downstream of the selection.
    #[arg(long)]
    pub downstream: bool,
    /// Recompute these instances even if fresh: STAGE or STAGE:LABEL-GLOB (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// Print each instance that would run, and why; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Instances run at once (default: number of cores).
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Print one JSON document instead of text (shape in docs/cli.md).
    #[arg(long)]
    pub json: bool,
    /// Where to compute (default: `[executor] kind` of the config, else local).
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorArg>,
    /// With the Slurm executor: submit, print the job ids and return.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorArg {
    /// Threads on this machine.
    Local,
    /// Job arrays on a Slurm cluster (`[executor.slurm]` in the config).
    Slurm,
}

/// One task of a Slurm run (what the run's batch scripts call).
#[derive(Debug, Args)]
pub struct SlurmTaskArgs {
    pub run_dir: PathBuf,
    pub array: String,
    pub task: usize,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only these (STAGE or STAGE:LABEL-GLOB) and what they need upstream.
    pub selectors: Vec<String>,
    /// Exit 1 when any instance is not fresh (for scripts and CI).
    #[arg(long)]
    pub check: bool,
    /// Print one JSON document instead of text (shape in docs/cli.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub json: JsonArgs,
    /// Print the configuration reference (every key, its type, default and
    /// meaning: docs/configuration.md) instead; reads no config file.
    #[arg(long, conflicts_with = "json")]
    pub reference: bool,
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print one JSON document instead of text (shape in docs/cli.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The folder to write (created if needed; files in it are replaced).
    pub dir: PathBuf,
    /// Only these stages (default: every stage with results).
    pub stages: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExploreArgs {
    /// Port to listen on (0: any free one; the URL is printed).
    #[arg(long, default_value_t = crate::config::EXPLORE_PORT)]
    pub port: u16,
    /// Address to listen on. Anything but loopback serves every table of
    /// the store to whoever reaches it (warned on stderr).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Open the page in the default browser.
    #[arg(long)]
    pub open: bool,
    /// Requests answered at once.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Pipeline A.
    pub a: PathBuf,
    /// Pipeline B (default: A again, e.g. with --set-b for a sweep point).
    pub b: Option<PathBuf>,
    /// Overrides for A only (the global --set applies to both).
    #[arg(long = "set-a", value_name = "KEY=VALUE")]
    pub set_a: Vec<String>,
    /// Overrides for B only.
    #[arg(long = "set-b", value_name = "KEY=VALUE")]
    pub set_b: Vec<String>,
    /// Folder for compare.parquet, compare.svg, compare.csv and compare.md.
    #[arg(long, default_value = "comparison")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct DagArgs {
    #[arg(long, value_enum, default_value_t = DagFormat::Text)]
    pub format: DagFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A stage, or STAGE:LABEL-GLOB for some of its instances.
    pub stage: String,
    #[arg(long)]
    pub json: bool,
    /// Print each Parquet file's schema and metadata instead of its path.
    #[arg(long)]
    pub schema: bool,
    /// Print who made each current entry: build, host, CPU, threads,
    /// ONNX Runtime and execution provider.
    #[arg(long, conflicts_with = "schema")]
    pub provenance: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// List what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Also list every entry kept, with why (this config's plan, another
    /// config's last run).
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

/// The random model a benchmark runs.
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[arg(long, default_value_t = 1024)]
    pub vocab: usize,
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
}

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Engine overhead: no-op run over a synthetic plan, and input hashing throughput.
    Engine(BenchEngineArgs),
    /// dist stage against bare ONNX Runtime runs over the same windows (CPU).
    Dist(BenchDistArgs),
    /// Exact KL throughput on synthetic log-prob arrays (default: a Pythia group).
    Kl(BenchKlArgs),
    /// BLiMP scoring throughput (sentences/s) by batch size: the shipped
    /// BLiMP pairs, Pythia-tokenized, on a random model of the given shape.
    Blimp(BenchBlimpArgs),
    /// `explore`'s cost: opening a store, the first view, a token lookup,
    /// a trajectory, memory — on the config's store and a synthetic
    /// Pythia-scale one.
    Explore(BenchExploreArgs),
    /// The lineage check (weights' norms and distances to every start)
    /// against the forward passes of one checkpoint, on random models
    /// (default: Pythia-70M's shape).
    Lineage(BenchLineageArgs),
    /// Peak resident memory of `dist` and `kl` at the paper's scale (five
    /// seeds, the paper's sample text, vocabulary 50,277) under each
    /// setting that bounds it, each in its own `run` process.
    Memory(BenchMemoryArgs),
    /// Training throughput (tokens/s) of each model size in the config's
    /// [train], with the fused training ops and with candle's own (the same
    /// bits), and their ratio.
    Train(BenchTrainArgs),
    /// The Slurm executor: submitting a synthetic plan (held, then
    /// cancelled) to the cluster, and each stage's per-task key resolution
    /// on the config's store.
    Slurm(BenchSlurmArgs),
}

/// Arguments of `bench engine`.
#[derive(Debug, Args)]
pub struct BenchEngineArgs {
    /// Instances (and input files) in the synthetic plan.
    #[arg(long, default_value_t = 10_000)]
    pub instances: usize,
    /// Size of the file whose hashing throughput is measured, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub hash_mib: usize,
    /// Scratch folder (default: a temp folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Arguments of `bench dist`.
#[derive(Debug, Args)]
pub struct BenchDistArgs {
    /// Rows (tokens evaluated).
    #[arg(long, default_value_t = 17_000)]
    pub rows: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Alternating rounds (bare ORT, dist, dist with the full array).
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Entries of each row's top list in the table (`dist.top_k`).
    #[arg(long, default_value_t = crate::config::DEFAULT_TOP_K as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_k: u64,
    /// Every model on the CUDA execution provider (an error without
    /// one); the baseline's logits stay on the device (I/O binding).
    #[arg(long)]
    pub cuda: bool,
}

/// Arguments of `bench kl`.
#[derive(Debug, Args)]
pub struct BenchKlArgs {
    #[arg(long, default_value_t = 5)]
    pub seeds: usize,
    #[arg(long, default_value_t = 4662)]
    pub rows: usize,
    #[arg(long, default_value_t = 50_277)]
    pub vocab: usize,
    /// Power-law (Zipf-like) distributions, as a trained LM's, instead of
    /// logits uniform on [0, 12): logit = −2 ln u, so p ∝ u^−2.
    #[arg(long)]
    pub zipf: bool,
}

/// Arguments of `bench explore` (the synthetic store's shape).
#[derive(Debug, Args)]
pub struct BenchExploreArgs {
    #[arg(long, default_value_t = 5)]
    pub seeds: usize,
    #[arg(long, default_value_t = 4662)]
    pub rows: usize,
    /// Checkpoint steps (Pythia's first N of 154).
    #[arg(long, default_value_t = 154, value_parser = clap::value_parser!(u64).range(1..=154))]
    pub steps: u64,
    #[arg(long, default_value_t = 50_277)]
    pub vocab: usize,
    /// Only the synthetic store (not the config's).
    #[arg(long)]
    pub synthetic_only: bool,
    /// Measure the synthetic store in this folder (the child process the
    /// benchmark starts).
    #[arg(long, hide = true)]
    pub dir: Option<PathBuf>,
}

/// Arguments of `bench lineage`.
#[derive(Debug, Args)]
pub struct BenchLineageArgs {
    #[arg(long, default_value_t = 50_304)]
    pub vocab: usize,
    #[arg(long, default_value_t = 512)]
    pub d_model: usize,
    #[arg(long, default_value_t = 6)]
    pub layers: usize,
    /// Runs (each a start and one later checkpoint).
    #[arg(long, default_value_t = 2)]
    pub seeds: usize,
    /// Tokens per forward window.
    #[arg(long, default_value_t = 2048)]
    pub window: usize,
    /// Windows per checkpoint in the dist stage (the paper's 4,662 rows in
    /// windows of 2,048 with stride 1,024: 4).
    #[arg(long, default_value_t = 4)]
    pub windows: usize,
}

/// Arguments of `bench memory`.
#[derive(Debug, Args)]
pub struct BenchMemoryArgs {
    /// Width of the random models (memory is the logits' and arrays').
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 5)]
    pub seeds: usize,
    /// `dist.batch_size` values (windows of 2,048 per forward pass).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4])]
    pub batch: Vec<usize>,
    /// `kl.resident_mb` values.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 512, 4096])]
    pub resident: Vec<usize>,
    /// The shipped data folder (its `paper_sample`).
    #[arg(long, default_value = "data")]
    pub data: std::path::PathBuf,
}

/// Arguments of `bench blimp`.
#[derive(Debug, Args)]
pub struct BenchBlimpArgs {
    /// Pairs per paradigm (2 sentences each, 67 paradigms).
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Arguments of `bench train`.
#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Optimizer steps timed per size (after 2 warm-up steps).
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
}

/// Arguments of `bench slurm`.
#[derive(Debug, Args)]
pub struct BenchSlurmArgs {
    /// Instances in the synthetic plan.
    #[arg(long, default_value_t = 10_000)]
    pub instances: usize,
    /// Stages they are split into (each instance depends on its
    /// counterpart in the stage before).
    #[arg(long, default_value_t = 6)]
    pub stages: usize,
}
