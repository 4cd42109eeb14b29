use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use seedconv::cli::{Cli, Command};
use seedconv::commands::{self, Session};

/// mimalloc, keeping freed pages for the next allocation, where glibc's
/// malloc returns each large buffer to the kernel and faults its pages in
/// again on the next: aggregate's system time 18% → 4% of its CPU time, its
/// wall time −20% (docs/benchmarks.md, "System time and memory").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3
/// headers: retired options keep their places).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Training runs in worker processes of this binary (their own thread pools).
    if let Ok(exe) = std::env::current_exe() {
        seedconv::stages::train::register_worker(exe);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // How long freed memory stays with mimalloc before it goes back to the
    // kernel. A training worker is one job in its own process: it keeps
    // everything (its tensors are freed and reallocated every step; a purge
    // made each step fault its pages in again). Any other process may run
    // many jobs: memory unused for a second goes back (and at each job's
    // end, `engine::memory`), so it holds the largest job's memory rather
    // than the sum of what each stage left behind; aggregate's buffers,
    // freed and reallocated within a second, stay.
    let delay = if matches!(cli.command, Command::TrainWorker) {
        -1
    } else {
        1000
    };
    // SAFETY: sets one option; mimalloc reads it at its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay) };
    // init probes how long a window the model takes; ONNX Runtime logs each
    // refused length as an error, and those refusals are expected.
    let ort = if matches!(cli.command, Command::Init(_)) {
        "off"
    } else {
        "warn"
    };
    init_logging(cli.quiet, cli.verbose, ort);
    let cancel = Arc::new(AtomicBool::new(false));
    {
        // First Ctrl-C: stop starting instances and let running ones abort
        // cleanly (their temp folders are removed). Second: exit at once;
        // nothing half-written is ever trusted, so that is safe too.
        let cancel = cancel.clone();
        let _ = ctrlc::set_handler(move || {
            if cancel.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("interrupt: finishing cleanly (Ctrl-C again to exit now)");
        });
    }
    if let Err(e) = dispatch(&cli, cancel) {
        let code = commands::exit_code(&e);
        if !matches!(e.downcast_ref::<std::io::Error>(), Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            eprintln!("error: {e:#}");
            std::process::exit(code);
        }
    }
}

fn dispatch(cli: &Cli, cancel: Arc<AtomicBool>) -> anyhow::Result<()> {
    match &cli.command {
        Command::Run(args) => commands::run(
            &Session::open(&cli.config, &cli.set, cancel)?,
            args,
            cli.quiet,
        ),
        Command::Status(args) => {
            commands::status(&Session::open(&cli.config, &cli.set, cancel)?, args)
        }
        Command::Dag(args) => commands::dag(&Session::open(&cli.config, &cli.set, cancel)?, args),
        Command::Export(args) => {
            commands::export(&Session::open(&cli.config, &cli.set, cancel)?, args)
        }
        Command::Explore(args) => {
            commands::explore(&Session::open(&cli.config, &cli.set, cancel)?, args)
        }
        Command::Compare(args) => commands::compare(args, &cli.set, cancel),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "seedconv", &mut std::io::stdout());
            Ok(())
        }
        Command::Show(args) => commands::show(&Session::open(&cli.config, &cli.set, cancel)?, args),
        Command::Verify(args) => {
            commands::verify(&Session::open(&cli.config, &cli.set, cancel)?, args)
        }
        Command::Gc(args) => commands::gc(&Session::open(&cli.config, &cli.set, cancel)?, args),
        Command::Config(args) if args.reference => {
            print!("{}", seedconv::config::reference().0);
            Ok(())
        }
        Command::Config(args) => commands::show_config(
            &seedconv::config::load_with(&cli.config, &cli.set)?,
            &args.json,
        ),
        Command::TrainWorker => std::process::exit(seedconv::stages::train::worker_main()),
        Command::SlurmTask(args) => {
            commands::slurm_task(&Session::open(&cli.config, &cli.set, cancel)?, args)
        }
        Command::Doctor => commands::doctor(&cli.config),
        Command::Init(args) => commands::init(&cli.config, args),
        Command::Bench(b) => commands::bench(b, &cli.config, &cli.set, || {
            Session::open(&cli.config, &cli.set, cancel)
        }),
    }
}

/// `ort`: the level ONNX Runtime's own log lines need to be shown.
fn init_logging(quiet: bool, verbose: u8, ort: &str) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    // ort logs through tracing; keep its chatter below our own level.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEEDCONV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},ort={ort}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}
