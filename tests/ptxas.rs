//! Assembles every embedded PTX module with `ptxas` for its architecture (no GPU needed) and
//! fails on an assembly error. The register / stack / spill report of every kernel is kept in
//! `target/ptx/<arch>.ptxas.txt`, beside the PTX itself (`target/ptx/<arch>.ptx`).
//!
//! ptxas: `$ATTN_PTXAS`, else `.tools/ptxas/bin/ptxas` (scripts/setup.sh), else `ptxas` on
//! PATH. Missing, the test skips and says so, unless `ATTN_REQUIRE_PTXAS=1` (CI).

use std::path::PathBuf;
use std::process::Command;

fn find_ptxas(root: &PathBuf) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ATTN_PTXAS") {
        return Some(p.into());
    }
    let local = root.join(".tools/ptxas/bin/ptxas");
    if local.exists() {
        return Some(local);
    }
    Command::new("ptxas").arg("--version").output().ok().filter(|o| o.status.success()).map(|_| "ptxas".into())
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let required = std::env::var("ATTN_REQUIRE_PTXAS").is_ok_and(|v| v == "1");
    let Some(ptxas) = find_ptxas(&root) else {
        if required {
            eprintln!("ptxas: not found, and ATTN_REQUIRE_PTXAS=1 (run scripts/setup.sh)");
            std::process::exit(1);
        }
        println!("ptxas check: SKIPPED: no ptxas (run scripts/setup.sh, or set ATTN_PTXAS)");
        return;
    };
    // The registry and the instantiation tables agree: every module holds exactly the entry
    // points the host names (checked without ptxas).
    for (_, arch, ptx) in attn_backends::ptx::PTX_MODULES {
        let mut want = attn_backends::backend::kernel_registry(arch);
        want.sort();
        let mut got: Vec<String> = ptx
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix(".visible .entry "))
            .map(|l| l.split('(').next().unwrap_or("").trim().to_string())
            .collect();
        got.sort();
        if got != want {
            eprintln!("kernel registry: the {arch} module's entry points {got:?} differ from the registry's {want:?}");
            std::process::exit(1);
        }
        println!("kernel registry: {arch} holds the {} registered entry points", want.len());
        // build.rs's `.maxntid` on the Hopper kernels is the block the host launches.
        let maxntid = format!(".maxntid {}, 1, 1", attn_backends::params::PREFILL_SM90_THREADS);
        let hopper = got.iter().filter(|k| k.contains("_sm90_")).count();
        if ptx.matches(&maxntid).count() != hopper {
            eprintln!("{arch}: {hopper} Hopper kernels, {} with `{maxntid}`", ptx.matches(&maxntid).count());
            std::process::exit(1);
        }
    }
    let dir = root.join("target/ptx");
    std::fs::create_dir_all(&dir).expect("create target/ptx");
    let mut failed = false;
    for (_, arch, ptx) in attn_backends::ptx::PTX_MODULES {
        let file = dir.join(format!("{arch}.ptx"));
        std::fs::write(&file, ptx).expect("write PTX");
        let out = Command::new(&ptxas)
            .args([&format!("-arch={arch}"), "-v", "--warn-on-spills", "-o", "/dev/null"])
            .arg(&file)
            .output()
            .expect("run ptxas");
        let report = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        std::fs::write(dir.join(format!("{arch}.ptxas.txt")), &report).expect("write report");
        let kernels = report.matches("Compiling entry function").count();
        let spilling = report.lines().filter(|l| l.contains("Registers are spilled")).count();
        if out.status.success() && kernels > 0 {
            println!("ptxas {arch}: ok, {kernels} kernels, {spilling} with spills (report: target/ptx/{arch}.ptxas.txt)");
        } else {
            failed = true;
            println!("ptxas {arch}: FAILED ({}):\n{report}", out.status);
        }
    }
    if failed {
        std::process::exit(1);
    }
}
