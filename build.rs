//! Compile the vendored `proto/onnx.proto` into Rust (prost) with protox, a
//! pure-Rust protobuf compiler, so building needs no `protoc` binary; and
//! record the git commit the binary is built from (for provenance).
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["onnx.proto"], ["proto"]).expect("proto/onnx.proto compiles");
    // `bytes` fields as `bytes::Bytes`: a model decoded from a memory map
    // then holds its weights without copying them (the runtime edits the
    // graph of exports that may be gigabytes).
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(fds)
        .expect("prost generates the ONNX messages");
    // A new commit or a staged change reruns this script; edits to the work
    // tree after it ran are not seen ("dirty" is as of the build).
    // `--git-path`: a linked worktree keeps HEAD and index elsewhere.
    for f in ["HEAD", "index"] {
        let p = git(&["rev-parse", "--git-path", f]).unwrap_or_else(|| format!(".git/{f}"));
        if std::path::Path::new(&p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!("cargo:rustc-env=SEEDCONV_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=SEEDCONV_GIT_DIRTY={dirty}");
}
