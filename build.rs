//! Compiles `device-kernels/` (`#![no_std]`) to PTX, one module per target architecture,
//! with upstream rustc's `nvptx64-nvidia-cuda` target, and embeds them in the library.
//!
//! Architectures: `ATTN_CUDA_ARCHS` (comma-separated, e.g. `sm_80,sm_90a`; default
//! `sm_80,sm_90a`: an sm_90 module would be the sm_80 one but for its `.target` line, and the
//! driver's JIT runs the sm_80 module on every newer GPU). This script never asks the machine what GPU it has. Each module
//! holds the kernels its architecture can run, as the kernel table says
//! (`device-kernels/src/registry.rs`, whose rows this script also turns into the device
//! crate's entry points): the `Portable` ones in every module, the `Sm90a` ones (wgmma and
//! other sm_90a instructions) only in arch-specific `a` modules of compute capability 9.0;
//! they are internalised and dropped before any other architecture is lowered, so no Hopper
//! instruction ever reaches `llc` for sm_80. Every entry point gets the `.maxntid` of its
//! row. GPUs past sm_80 other than Hopper run the portable module through the driver's JIT (an
//! `a` module runs on its own architecture only).
//!
//! Toolchain: the device build always uses the toolchain pinned in `rust-toolchain.toml`
//! (nightly, with rust-src and llvm-tools), found through rustup, whatever toolchain builds
//! the crate itself (a consumer on stable included). Where it is not installed, the PTX
//! shipped in `ptx/` is used instead, with a warning; `ptx/SOURCES` records the SHA-256 of
//! every input it was built from (`device-kernels/src/**`, this file, `rust-toolchain.toml`)
//! and of each PTX file, and a shipped PTX whose inputs differ from the ones here is refused.
//! `scripts/ship-ptx.sh` generates `ptx/` at packaging time (it is never committed);
//! `scripts/ship-ptx.sh --check` fails unless a fresh build is byte-identical to it.
//! `ATTN_PTX_FROM=build` (never fall back) or `=shipped` (never build) forces one path.
//!
//! The device crate's manifest is written by this script (`OUT_DIR/device-crate/Cargo.toml`):
//! `device-kernels/` has no `Cargo.toml`, so that `cargo package` keeps its sources (it drops
//! any directory holding one).
//!
//! The link step is this project's own: the same build-script executable is handed to rustc
//! as the nvptx "linker" (`-C linker=`), and when started with `ATTN_PTX_LINKER=1` it links
//! the crate's LLVM bitcode with the needed members of its rlibs (`llvm-link`), internalises
//! everything but the kernels and optimises (`opt`). This script then lowers the linked
//! module once per architecture (`llc`). The LLVM tools come from the toolchain's
//! `llvm-tools` component.
//!
//! No build path puts a machine-specific path into the PTX (source paths are remapped), so
//! the same inputs give the same bytes anywhere.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const DEFAULT_ARCHS: &str = "sm_80,sm_90a";
const NVPTX: &str = "nvptx64-nvidia-cuda";
/// LLVM's full-unroll budget, raised so that loops over per-thread register arrays
/// (fixed trip counts, big bodies) unroll and the arrays never spill to local memory.
const UNROLL_THRESHOLD: u32 = 2000;
/// The shipped PTX (`<arch>.ptx`) and its manifest, relative to the package root.
const SHIPPED_DIR: &str = "ptx";
const MANIFEST: &str = "SOURCES";
const REGENERATE: &str = "scripts/ship-ptx.sh";

/// The device crate's manifest; `{lib}` is replaced by the path of `device-kernels/src/lib.rs`.
/// Its own workspace root, built only for nvptx64-nvidia-cuda: one codegen unit, no overflow
/// checks, no unwinding.
const DEVICE_MANIFEST: &str = r#"[package]
name = "attn-device-kernels"
version = "0.1.0"
edition = "2024"

[workspace]

[lib]
crate-type = ["cdylib"]
path = "{lib}"

[profile.release]
opt-level = 3
codegen-units = 1
panic = "abort"
debug = false
overflow-checks = false
debug-assertions = false
lto = false
"#;

fn main() {
    if env::var_os("ATTN_PTX_LINKER").is_some() {
        if let Err(e) = link(env::args().skip(1).collect()) {
            eprintln!("attn-backends PTX linker: {e}");
            exit(1);
        }
        return;
    }
    if let Err(e) = build() {
        eprintln!("error: building the device kernels failed:\n{e}");
        exit(1);
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    output(cmd).map(|_| ())
}

/// Runs `cmd`; its stdout on success, else an error with both outputs.
fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// An architecture name `sm_NN` or `sm_NNa`, returned as (name, compute capability NN).
fn parse_arch(s: &str) -> Result<(String, u32), String> {
    let digits = s.strip_prefix("sm_").map(|r| r.trim_end_matches('a'));
    match digits.and_then(|d| d.parse::<u32>().ok()) {
        Some(cc) if cc >= 80 => Ok((s.to_string(), cc)),
        Some(cc) => Err(format!("ATTN_CUDA_ARCHS: {s}: compute capability {cc} is below 80 (the kernels use sm_80 instructions)")),
        None => Err(format!("ATTN_CUDA_ARCHS: `{s}` is not an architecture name like sm_80 or sm_90a")),
    }
}

/// The pinned toolchain, installed, with what the device build needs.
struct Toolchain {
    rustc: PathBuf,
    cargo: PathBuf,
    sysroot: PathBuf,
    llvm: PathBuf,
    /// `rustc --version`, recorded in the manifest.
    version: String,
}

/// The `channel` of `rust-toolchain.toml`.
fn pinned_channel(root: &Path) -> Result<String, String> {
    let file = root.join("rust-toolchain.toml");
    let text = fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|r| r.trim_start().strip_prefix('='))
        .map(|r| r.trim().trim_matches('"').to_string())
        .next()
        .ok_or_else(|| format!("{} names no channel", file.display()))
}

/// Where rustup may be: on PATH, else in `$CARGO_HOME/bin` or `~/.cargo/bin`.
fn rustup_candidates() -> Vec<PathBuf> {
    let mut candidates = vec![PathBuf::from("rustup")];
    if let Some(home) = env::var_os("CARGO_HOME") {
        candidates.push(Path::new(&home).join("bin/rustup"));
    }
    if let Some(home) = env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/rustup"));
    }
    candidates
}

/// The pinned toolchain through rustup (never installing anything), or why not.
fn pinned_toolchain(channel: &str) -> Result<Toolchain, String> {
    // `rustup which` with an explicit toolchain never installs one.
    let which = |tool: &str| {
        for rustup in rustup_candidates() {
            let Ok(out) = Command::new(&rustup)
                .args(["which", "--toolchain", channel, tool])
                .env("RUSTUP_AUTO_INSTALL", "0")
                .env_remove("RUSTUP_TOOLCHAIN")
                .output()
            else {
                continue;
            };
            if !out.status.success() {
                return Err(format!("toolchain {channel} is not installed"));
            }
            return Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
        Err("rustup is not on PATH (nor in $CARGO_HOME/bin)".to_string())
    };
    let rustc = which("rustc")?;
    let cargo = which("cargo")?;
    let sysroot = PathBuf::from(output(Command::new(&rustc).args(["--print", "sysroot"]))?);
    let version = output(Command::new(&rustc).arg("--version"))?;
    let host = env::var("HOST").unwrap_or_else(|_| "x86_64-unknown-linux-gnu".into());
    let llvm = sysroot.join("lib/rustlib").join(host).join("bin");
    let mut missing = Vec::new();
    if !llvm.join("llc").exists() {
        missing.push("llvm-tools");
    }
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        missing.push("rust-src");
    }
    if !missing.is_empty() {
        return Err(format!("toolchain {channel} lacks the {} component(s)", missing.join(" and ")));
    }
    Ok(Toolchain { rustc, cargo, sysroot, llvm, version })
}

fn build() -> Result<(), String> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=device-kernels/src");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=rust-toolchain.toml");
    println!("cargo:rerun-if-changed={SHIPPED_DIR}");
    println!("cargo:rerun-if-env-changed=ATTN_CUDA_ARCHS");
    println!("cargo:rerun-if-env-changed=ATTN_PTX_FROM");

    let archs_var = env::var("ATTN_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.to_string());
    let mut archs = archs_var
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_arch)
        .collect::<Result<Vec<_>, _>>()?;
    if archs.is_empty() {
        return Err("ATTN_CUDA_ARCHS names no architecture".into());
    }
    archs.sort_by_key(|a| a.1);
    archs.dedup();

    let channel = pinned_channel(&root)?;
    let install = format!(
        "rustup toolchain install {channel} --profile minimal -c rust-src -c llvm-tools (scripts/setup.sh does)"
    );
    let from = env::var("ATTN_PTX_FROM").unwrap_or_default();
    let toolchain = match from.as_str() {
        "" | "auto" => pinned_toolchain(&channel),
        "build" => Ok(pinned_toolchain(&channel).map_err(|e| format!("ATTN_PTX_FROM=build, but {e}: {install}"))?),
        "shipped" => Err("ATTN_PTX_FROM=shipped is set".to_string()),
        other => return Err(format!("ATTN_PTX_FROM: `{other}` is none of auto, build, shipped")),
    };

    // Only this build's architectures stay in OUT_DIR (the GPU bundle copies them all).
    for entry in fs::read_dir(&out_dir).map_err(|e| e.to_string())?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("attn_kernels_") && name.ends_with(".ptx") {
            let _ = fs::remove_file(entry.path());
        }
    }
    let inputs = hash_inputs(&root)?;
    let mut manifest = String::new();
    match toolchain {
        Ok(tc) => {
            build_ptx(&root, &out_dir, &tc, &archs)?;
            manifest = manifest_text(&channel, &tc.version, &inputs, &out_dir, &archs)?;
        }
        Err(why) => {
            let built_by = use_shipped(&root, &out_dir, &archs, &inputs, &why, &install)?;
            println!(
                "cargo:warning=attn-backends: using the PTX shipped in {SHIPPED_DIR}/ ({}; built by {built_by}), \
                 as {why}; to build it from device-kernels/: {install}",
                archs.iter().map(|a| a.0.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    // The manifest of what was built (scripts/ship-ptx.sh copies it into ptx/).
    fs::write(out_dir.join(MANIFEST), manifest).map_err(|e| e.to_string())?;

    let mut table = String::from(
        "/// The embedded PTX modules: (compute capability, architecture, PTX text), oldest first.\n\
         pub static PTX_MODULES: &[(u32, &str, &str)] = &[\n",
    );
    for (name, cc) in &archs {
        let ptx = out_dir.join(format!("attn_kernels_{name}.ptx"));
        table.push_str(&format!("    ({cc}, \"{name}\", include_str!({:?})),\n", ptx.display().to_string()));
    }
    table.push_str("];\n");
    fs::write(out_dir.join("ptx_modules.rs"), table).map_err(|e| e.to_string())?;
    Ok(())
}

/// Builds the device crate with the pinned toolchain and lowers it to
/// `OUT_DIR/attn_kernels_<arch>.ptx` for each architecture.
fn build_ptx(root: &Path, out_dir: &Path, tc: &Toolchain, archs: &[(String, u32)]) -> Result<(), String> {
    let kernels = root.join("device-kernels");
    let crate_dir = out_dir.join("device-crate");
    fs::create_dir_all(&crate_dir).map_err(|e| e.to_string())?;
    let lib = kernels.join("src/lib.rs");
    let lib = lib.to_str().ok_or("the path of device-kernels/src/lib.rs is not UTF-8")?;
    let manifest = DEVICE_MANIFEST.replace("{lib}", &lib.replace('\\', "/"));
    write_if_changed(&crate_dir.join("Cargo.toml"), manifest.as_bytes())?;
    let table = crate_dir.join("kernel_table.rs");
    write_if_changed(&table, kernel_table_source().as_bytes())?;
    let me = env::current_exe().map_err(|e| e.to_string())?;
    let target_dir = out_dir.join("device");

    // One rustc build for the lowest architecture; the linked bitcode is lowered per arch.
    let flags = [
        format!("-Clinker={}", me.display()),
        format!("-Ctarget-cpu={}", archs[0].0),
        // Kernels keep small per-thread arrays in registers only if their loops unroll fully.
        format!("-Cllvm-args=-unroll-threshold={UNROLL_THRESHOLD}"),
        // The nested cargo does not see this script (its linker) change: this makes it rebuild.
        format!("--cfg=attn_build_rs=\"{}\"", &sha256_file(&root.join("build.rs"))?[..16]),
        "--check-cfg=cfg(attn_build_rs,values(any()))".to_string(),
        // No machine-specific path may reach the PTX (panic locations, symbol names).
        format!("--remap-path-prefix={}=device-kernels", kernels.display()),
        format!("--remap-path-prefix={}=/rust", tc.sysroot.join("lib/rustlib/src/rust").display()),
    ]
    .join("\x1f");
    let mut cmd = Command::new(&tc.cargo);
    // The consumer's cargo, rustc and their settings must not leak into this build: it uses
    // the pinned toolchain whatever toolchain (stable included) runs this script.
    for (var, _) in env::vars_os() {
        let var = var.to_string_lossy();
        let keep = ["CARGO_HOME", "CARGO_MAKEFLAGS"].contains(&var.as_ref())
            || ["CARGO_NET_", "CARGO_HTTP_", "CARGO_TERM_"].iter().any(|p| var.starts_with(p));
        if (var.starts_with("CARGO") || var.starts_with("__CARGO") || var.starts_with("RUST")) && !keep {
            cmd.env_remove(var.as_ref());
        }
    }
    cmd.current_dir(&crate_dir)
        .args(["build", "--release", "--target", NVPTX, "-Zbuild-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC", &tc.rustc)
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env("ATTN_PTX_LINKER", "1")
        .env("ATTN_KERNEL_TABLE", &table)
        .env("ATTN_LLVM_BIN", &tc.llvm);
    if let Some(home) = env::var_os("RUSTUP_HOME") {
        cmd.env("RUSTUP_HOME", home);
    }
    run(&mut cmd)?;
    let linked = target_dir.join(NVPTX).join("release").join("attn_device_kernels.ptx");

    // The kernels (the module's only external definitions after the link's internalize) are
    // the table's; the portable module keeps its `Portable` rows.
    let exports = output(Command::new(tc.llvm.join("llvm-nm")).args(["--defined-only", "--extern-only", "--just-symbol-name"]).arg(&linked))?;
    let mut exports: Vec<&str> = exports.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    exports.sort();
    let kernels = kernel_specs();
    let mut table_names: Vec<&str> = kernels.iter().map(|(name, _)| name.as_str()).collect();
    table_names.sort();
    if exports != table_names {
        return Err(format!("the device crate's entry points {exports:?} are not the kernel table's {table_names:?}"));
    }
    let portable: Vec<&str> =
        kernels.iter().filter(|(_, k)| k.module == registry::Module::Portable).map(|(name, _)| name.as_str()).collect();
    let portable_bc = linked.with_extension("portable.bc");
    run(Command::new(tc.llvm.join("opt"))
        .arg(format!("--internalize-public-api-list={}", portable.join(",")))
        .arg("-passes=internalize,globaldce")
        .arg(&linked)
        .arg("-o")
        .arg(&portable_bc))?;
    for (name, cc) in archs {
        let hopper = *cc == 90 && name.ends_with('a');
        let ptx = out_dir.join(format!("attn_kernels_{name}.ptx"));
        run(Command::new(tc.llvm.join("llc"))
            .args(["-O3", "-march=nvptx64", &format!("-mcpu={name}"), "-mattr=+ptx80"])
            .arg(if hopper { &linked } else { &portable_bc })
            .arg("-o")
            .arg(&ptx))?;
        let text = fs::read_to_string(&ptx).map_err(|e| e.to_string())?;
        fs::write(&ptx, with_maxntid(&text, &kernels)?).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The kernel table (`registry.rs`), shared with the host and the device crate.
#[allow(dead_code)]
#[path = "device-kernels/src/registry.rs"]
mod registry;

/// Every kernel of the table, with its entry point's name.
fn kernel_specs() -> Vec<(String, registry::KernelSpec)> {
    let mut all = Vec::new();
    registry::for_each_kernel(|k| {
        let mut buf = [0u8; 64];
        let n = k.id.write_name(&mut buf);
        all.push((String::from_utf8_lossy(&buf[..n]).into_owned(), k));
    });
    all
}

/// The device crate's entry points, one per kernel of the table: a call of the family's
/// instance macro with the kernel's name, element types, head dim, score policy and depth.
fn kernel_table_source() -> String {
    let mut src = String::from("// Written by build.rs from device-kernels/src/registry.rs: one entry point per kernel.\n");
    for (name, k) in kernel_specs() {
        let id = k.id;
        src.push_str(&format!(
            "{}!({name}, {}, {}, {}, {}, {});\n",
            id.family.instance_macro(),
            id.q.device_type(),
            id.kv.device_type(),
            id.head_dim,
            id.score.device_type(),
            id.stages
        ));
    }
    src
}

/// The PTX with `.maxntid THREADS, 1, 1` on every entry point whose table row gives its
/// threads: ptxas then knows the block it allocates registers for, and `setmaxnreg` (the
/// Hopper kernels) moves registers between warpgroups only in a kernel that starts under
/// such a cap. Rust has no attribute that emits it (CUDA's `__launch_bounds__`); the
/// directive goes between the parameter list and the body.
fn with_maxntid(ptx: &str, kernels: &[(String, registry::KernelSpec)]) -> Result<String, String> {
    let mut out = String::with_capacity(ptx.len() + 4096);
    let mut pending: Option<u32> = None;
    for line in ptx.lines() {
        if let Some(rest) = line.strip_prefix(".visible .entry ") {
            let name = rest.split('(').next().unwrap_or("").trim();
            let spec = kernels.iter().find(|(n, _)| n == name).ok_or_else(|| format!("PTX entry {name} is not in the kernel table"))?;
            pending = Some(spec.1.threads).filter(|&t| t > 0);
        }
        out.push_str(line);
        out.push('\n');
        if let (Some(threads), true) = (pending, line.starts_with(')')) {
            out.push_str(&format!(".maxntid {threads}, 1, 1\n"));
            pending = None;
        }
    }
    Ok(out)
}

/// The kernels' shared constants (the host crate includes the same file).
#[allow(dead_code)]
#[path = "device-kernels/src/params.rs"]
mod params;

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if fs::read(path).ok().as_deref() != Some(bytes) {
        fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// `(sha256, path)` of every input of the PTX (the `.rs` files of `device-kernels/src`, this
/// script, `rust-toolchain.toml`), paths relative to the package root, sorted.
fn hash_inputs(root: &Path) -> Result<Vec<(String, String)>, String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, String)>) -> Result<(), String> {
        let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let rel = format!("{rel}/{name}");
            if name.starts_with('.') {
                continue;
            } else if entry.path().is_dir() {
                walk(&entry.path(), &rel, out)?;
            } else if name.ends_with(".rs") {
                out.push((sha256_file(&entry.path())?, rel));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&root.join("device-kernels/src"), "device-kernels/src", &mut out)?;
    for file in ["build.rs", "rust-toolchain.toml"] {
        out.push((sha256_file(&root.join(file))?, file.to_string()));
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<String, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

fn manifest_text(
    channel: &str,
    version: &str,
    inputs: &[(String, String)],
    out_dir: &Path,
    archs: &[(String, u32)],
) -> Result<String, String> {
    let mut m = format!(
        "# The PTX in this directory, built by {REGENERATE} with the pinned toolchain from the\n\
         # inputs below (SHA-256). build.rs uses it only where that toolchain is not installed,\n\
         # and refuses it if an input differs. Regenerate: {REGENERATE}\n\
         toolchain {channel} {version}\n"
    );
    for (hash, path) in inputs {
        m.push_str(&format!("input {hash} {path}\n"));
    }
    for (name, _) in archs {
        m.push_str(&format!("ptx {} {name}.ptx\n", sha256_file(&out_dir.join(format!("attn_kernels_{name}.ptx")))?));
    }
    Ok(m)
}

/// Copies the shipped PTX of `archs` into OUT_DIR after checking `ptx/SOURCES` against the
/// inputs here and the PTX files; returns the toolchain line of the manifest.
fn use_shipped(
    root: &Path,
    out_dir: &Path,
    archs: &[(String, u32)],
    inputs: &[(String, String)],
    why: &str,
    install: &str,
) -> Result<String, String> {
    let dir = root.join(SHIPPED_DIR);
    let file = dir.join(MANIFEST);
    let text = fs::read_to_string(&file).map_err(|e| {
        format!("{why}, and there is no shipped PTX ({}: {e}): {install}", file.display())
    })?;
    let mut toolchain = String::new();
    let mut shipped_inputs = Vec::new();
    let mut shipped_ptx = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let mut f = line.splitn(3, ' ');
        match (f.next(), f.next(), f.next()) {
            (Some("toolchain"), Some(_), Some(version)) => toolchain = version.to_string(),
            (Some("input"), Some(h), Some(p)) => shipped_inputs.push((h.to_string(), p.to_string())),
            (Some("ptx"), Some(h), Some(p)) => shipped_ptx.push((h.to_string(), p.to_string())),
            _ => return Err(format!("{}: cannot read the line `{line}`", file.display())),
        }
    }
    if shipped_inputs != inputs {
        let mut differ: Vec<&str> = inputs
            .iter()
            .filter(|i| !shipped_inputs.contains(i))
            .map(|i| i.1.as_str())
            .collect();
        differ.extend(shipped_inputs.iter().filter(|i| !inputs.iter().any(|j| j.1 == i.1)).map(|i| i.1.as_str()));
        return Err(format!(
            "{why}, and the PTX shipped in {SHIPPED_DIR}/ is stale: it was built from other \
             versions of {}.\nInstall the pinned toolchain ({install}), or regenerate the shipped \
             PTX on a machine that has it: {REGENERATE}",
            differ.join(", ")
        ));
    }
    for (name, _) in archs {
        let want = format!("{name}.ptx");
        let Some((hash, _)) = shipped_ptx.iter().find(|p| p.1 == want) else {
            let have: Vec<&str> = shipped_ptx.iter().map(|p| p.1.trim_end_matches(".ptx")).collect();
            return Err(format!(
                "{why}, and ATTN_CUDA_ARCHS asks for {name}, which the shipped PTX does not cover \
                 (it has {}): {install}",
                have.join(", ")
            ));
        };
        let bytes = fs::read(dir.join(&want)).map_err(|e| format!("cannot read {SHIPPED_DIR}/{want}: {e}"))?;
        if &sha256_hex(&bytes) != hash {
            return Err(format!(
                "{SHIPPED_DIR}/{want} does not match its SHA-256 in {SHIPPED_DIR}/{MANIFEST}: regenerate it: {REGENERATE}"
            ));
        }
        fs::write(out_dir.join(format!("attn_kernels_{name}.ptx")), bytes).map_err(|e| e.to_string())?;
    }
    Ok(toolchain)
}

/// SHA-256 (FIPS 180-4), hex.
fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

fn is_bitcode(path: &Path) -> bool {
    match fs::read(path) {
        Ok(b) => b.starts_with(b"BC\xc0\xde") || b.starts_with(&[0xde, 0xc0, 0x17, 0x0b]),
        Err(_) => false,
    }
}

/// The nvptx "linker": `rustc` calls it with `--export-symbol NAME`, bitcode objects, rlibs,
/// and `-o OUT`. Writes the internalised, optimised bitcode module to OUT.
fn link(args: Vec<String>) -> Result<(), String> {
    let llvm = PathBuf::from(env::var("ATTN_LLVM_BIN").map_err(|_| "ATTN_LLVM_BIN unset")?);
    let mut out = None;
    let mut exports = Vec::new();
    let mut objects = Vec::new();
    let mut rlibs = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => out = it.next().map(PathBuf::from),
            "--export-symbol" => exports.extend(it.next()),
            "-L" | "--target" | "--target-cpu" => {
                it.next();
            }
            _ if a.ends_with(".rlib") => rlibs.push(PathBuf::from(a)),
            _ if a.ends_with(".o") => objects.push(PathBuf::from(a)),
            _ => {}
        }
    }
    let out = out.ok_or("no -o given")?;
    if exports.is_empty() {
        return Err("no --export-symbol given: the crate defines no kernel".into());
    }
    let work = out.with_extension("link");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;

    // Members of the rlibs are linked lazily: only what the kernels need.
    let mut lazy = Vec::new();
    for (i, rlib) in rlibs.iter().enumerate() {
        let dir = work.join(format!("rlib{i}"));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        run(Command::new(llvm.join("llvm-ar")).arg("x").arg(rlib).current_dir(&dir))?;
        for entry in fs::read_dir(&dir).map_err(|e| e.to_string())? {
            let p = entry.map_err(|e| e.to_string())?.path();
            if is_bitcode(&p) {
                lazy.push(p);
            }
        }
    }
    let crate_bc = work.join("crate.bc");
    run(Command::new(llvm.join("llvm-link")).args(&objects).arg("-o").arg(&crate_bc))?;
    let linked = work.join("linked.bc");
    let mut cmd = Command::new(llvm.join("llvm-link"));
    cmd.arg(&crate_bc);
    if !lazy.is_empty() {
        cmd.arg("--only-needed").args(&lazy);
    }
    run(cmd.arg("-o").arg(&linked))?;
    run(Command::new(llvm.join("opt"))
        .arg(format!("--internalize-public-api-list={}", exports.join(",")))
        .arg("-passes=internalize,globaldce,default<O3>")
        .arg(format!("-unroll-threshold={UNROLL_THRESHOLD}"))
        .arg(&linked)
        .arg("-o")
        .arg(&out))?;
    let _ = fs::remove_dir_all(&work);
    Ok(())
}
