// Records which rustc built this crate, so the check can show the consumer was built on stable.
fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = std::process::Command::new(rustc).arg("--version").output().expect("rustc --version");
    println!("cargo:rustc-env=DOWNSTREAM_RUSTC={}", String::from_utf8_lossy(&out.stdout).trim());
}
