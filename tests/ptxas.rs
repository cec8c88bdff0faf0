//! Assembles every embedded PTX module with `ptxas` for its architecture (no GPU needed) and
//! fails on an assembly error, or where ptxas serializes a kernel's `wgmma` (C7514/C7515/C7518/C7520). The
//! register / stack / spill report of every kernel is kept in `target/ptx/<arch>.ptxas.txt`,
//! beside the PTX itself (`target/ptx/<arch>.ptx`).
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
    // The kernel table and the modules agree: every module holds exactly the table's kernels
    // for it (checked without ptxas).
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
        // Every entry point carries the `.maxntid` of its table row (the block the host
        // launches), and no other.
        for name in &got {
            let id = attn_backends::KernelId::by_name(name).expect("checked above: a table kernel");
            let threads = attn_backends::registry::find(&id).map_or(0, |k| k.threads);
            let body = ptx.split(&format!(".visible .entry {name}(")).nth(1).unwrap_or("");
            let head = body.split('{').next().unwrap_or("");
            let want = (threads > 0).then(|| format!(".maxntid {threads}, 1, 1"));
            let have = head.lines().find(|l| l.starts_with(".maxntid")).map(str::to_string);
            if have != want {
                eprintln!("{arch}: {name}: `{have:?}`, the table says {want:?}");
                std::process::exit(1);
            }
        }
        println!("kernel registry: {arch}: every entry point's .maxntid is its table row's");
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
        // A Hopper kernel whose wgmma ptxas serializes (C7514, C7515, C7518, C7520, each a
        // reason it could not keep them asynchronous: in the seesaw MLA kernels, a batch
        // left in flight across a branch, an mbarrier wait loop or the loop's back edge)
        // runs its MMAs one batch at a time: the v2 seesaw lost 40% that way, silently
        // (benches/NOTES-mla.md). Such a kernel fails here.
        let serialized: Vec<&str> = report.lines().filter(|l| l.contains("wgmma.mma_async instructions are serialized")).collect();
        if !serialized.is_empty() {
            failed = true;
            println!("ptxas {arch}: wgmma serialized by ptxas in {} kernel(s):\n{}", serialized.len(), serialized.join("\n"));
        }
        if out.status.success() && kernels > 0 && serialized.is_empty() {
            println!("ptxas {arch}: ok, {kernels} kernels, {spilling} with spills, none with serialized wgmma (report: target/ptx/{arch}.ptxas.txt)");
        } else if !out.status.success() || kernels == 0 {
            failed = true;
            println!("ptxas {arch}: FAILED ({}):\n{report}", out.status);
        }
    }
    if failed {
        std::process::exit(1);
    }
}
