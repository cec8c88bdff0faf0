//! Compiles `device-kernels/` (`#![no_std]`) to PTX, one module per target architecture,
//! with upstream rustc's `nvptx64-nvidia-cuda` target, and embeds them in the library.
//!
//! Architectures: `ATTN_CUDA_ARCHS` (comma-separated, e.g. `sm_80,sm_90`; default
//! `sm_80,sm_90`). This script never asks the machine what GPU it has.
//!
//! The link step is this project's own: the same build-script executable is handed to rustc
//! as the nvptx "linker" (`-C linker=`), and when started with `ATTN_PTX_LINKER=1` it links
//! the crate's LLVM bitcode with the needed members of its rlibs (`llvm-link`), internalises
//! everything but the kernels and optimises (`opt`). This script then lowers the linked
//! module once per architecture (`llc`). The LLVM tools come from the toolchain's
//! `llvm-tools` component.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const DEFAULT_ARCHS: &str = "sm_80,sm_90";
const NVPTX: &str = "nvptx64-nvidia-cuda";
/// LLVM's full-unroll budget, raised so that loops over per-thread register arrays
/// (fixed trip counts, big bodies) unroll and the arrays never spill to local memory.
const UNROLL_THRESHOLD: u32 = 2000;

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
    let out = cmd.output().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
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

fn llvm_bin_dir(rustc: &str) -> Result<PathBuf, String> {
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run {rustc}: {e}"))?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let host = env::var("HOST").unwrap_or_else(|_| "x86_64-unknown-linux-gnu".into());
    let dir = Path::new(&sysroot).join("lib/rustlib").join(host).join("bin");
    if !dir.join("llc").exists() {
        return Err(format!(
            "{} has no llc: install the toolchain's llvm-tools component (scripts/setup.sh does)",
            dir.display()
        ));
    }
    Ok(dir)
}

fn build() -> Result<(), String> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernels = root.join("device-kernels");
    println!("cargo:rerun-if-changed=device-kernels/src");
    println!("cargo:rerun-if-changed=device-kernels/Cargo.toml");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ATTN_CUDA_ARCHS");

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

    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let llvm = llvm_bin_dir(&rustc)?;
    let me = env::current_exe().map_err(|e| e.to_string())?;
    let target_dir = out_dir.join("device");

    // One rustc build for the lowest architecture; the linked bitcode is lowered per arch.
    let flags = [
        format!("-Clinker={}", me.display()),
        format!("-Ctarget-cpu={}", archs[0].0),
        // Kernels keep small per-thread arrays in registers only if their loops unroll fully.
        format!("-Cllvm-args=-unroll-threshold={UNROLL_THRESHOLD}"),
    ]
    .join("\x1f");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&kernels)
        .args(["build", "--release", "--target", NVPTX, "-Zbuild-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env("ATTN_PTX_LINKER", "1")
        .env("ATTN_LLVM_BIN", &llvm);
    for var in ["RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTC_WRAPPER",
                "RUSTC_WORKSPACE_WRAPPER", "CARGO_PROFILE_RELEASE_LTO", "CARGO_BUILD_RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    run(&mut cmd)?;
    let linked = target_dir.join(NVPTX).join("release").join("attn_device_kernels.ptx");

    // Only this build's architectures stay in OUT_DIR (the GPU bundle copies them all).
    for entry in fs::read_dir(&out_dir).map_err(|e| e.to_string())?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("attn_kernels_") && name.ends_with(".ptx") {
            let _ = fs::remove_file(entry.path());
        }
    }
    let mut table = String::from(
        "/// The embedded PTX modules: (compute capability, architecture, PTX text), oldest first.\n\
         pub static PTX_MODULES: &[(u32, &str, &str)] = &[\n",
    );
    for (name, cc) in &archs {
        let ptx = out_dir.join(format!("attn_kernels_{name}.ptx"));
        run(Command::new(llvm.join("llc"))
            .args(["-O3", "-march=nvptx64", &format!("-mcpu={name}"), "-mattr=+ptx80"])
            .arg(&linked)
            .arg("-o")
            .arg(&ptx))?;
        table.push_str(&format!("    ({cc}, \"{name}\", include_str!({:?})),\n", ptx.display().to_string()));
    }
    table.push_str("];\n");
    fs::write(out_dir.join("ptx_modules.rs"), table).map_err(|e| e.to_string())?;
    Ok(())
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
