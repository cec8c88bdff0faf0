//! The `attn` binary as a user runs it: exit codes, what it prints, and what it refuses.
//! Every run that could reach a GPU passes `--cpu`, so the results are the same everywhere.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const ATTN: &str = env!("CARGO_BIN_EXE_attn");

fn attn(args: &[&str]) -> Output {
    Command::new(ATTN)
        .args(args)
        .env_remove("ATTN_BACKEND")
        .env_remove("RUST_LOG")
        .output()
        .expect("runs the attn binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exit code, stdout, stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let o = attn(args);
    (o.status.code().unwrap_or(-1), text(&o.stdout), text(&o.stderr))
}

/// A config file in a directory of this test's own.
fn config(name: &str, json: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attn-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, json).unwrap();
    path
}

fn assert_no_panic(stderr: &str) {
    assert!(!stderr.contains("panicked") && !stderr.contains("memory allocation"), "{stderr}");
}

#[test]
fn huge_counts_are_refused_when_the_file_is_read() {
    let f = config("huge.json", r#"{"num_attention_heads": 65536, "num_key_value_heads": 65536, "head_dim": 8192}"#);
    let f = f.to_str().unwrap();
    for cmd in ["demo", "select"] {
        let mut args = vec![cmd, "--config", f];
        if cmd == "demo" {
            args.push("--cpu");
        }
        let (code, out, err) = run(&args);
        assert_eq!(code, 1, "{cmd}: {out}{err}");
        assert_no_panic(&err);
        assert!(err.contains("huge.json") && err.contains("`num_attention_heads` is 65536") && err.contains("1024"), "{cmd}: {err}");
        assert!(!out.contains(": CPU"), "{cmd} must not claim a backend can serve it: {out}");
    }
    let f = config("huge-dim.json", r#"{"num_attention_heads": 32, "head_dim": 8192}"#);
    let (code, _, err) = run(&["demo", "--cpu", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("huge-dim.json") && err.contains("`head_dim` is 8192") && err.contains("1024"), "{err}");
    let f = config(
        "huge-mla.json",
        r#"{"num_attention_heads": 16, "kv_lora_rank": 16777216, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128}"#,
    );
    let (code, _, err) = run(&["demo", "--cpu", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("huge-mla.json") && err.contains("`kv_lora_rank` is 16777216") && err.contains("4096"), "{err}");
}

#[test]
fn a_model_within_the_limits_too_big_for_the_demo_is_an_error_not_an_abort() {
    let f = config("big.json", r#"{"num_attention_heads": 1024, "num_key_value_heads": 1024, "head_dim": 1024}"#);
    let (code, _, err) = run(&["demo", "--cpu", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert_no_panic(&err);
    assert!(err.contains("GiB") && err.contains("1024 KV heads x head dim 1024"), "{err}");
}

#[test]
fn floats_out_of_f32_range_are_refused_naming_file_and_field() {
    for (field, json) in [
        ("attn_logit_softcapping", r#"{"num_attention_heads": 8, "head_dim": 64, "attn_logit_softcapping": 1e300}"#),
        ("final_logit_softcapping", r#"{"num_attention_heads": 8, "head_dim": 64, "final_logit_softcapping": 1e300}"#),
        ("query_pre_attn_scalar", r#"{"num_attention_heads": 8, "head_dim": 64, "query_pre_attn_scalar": 1e-300}"#),
        ("attn_config.softmax_scale", r#"{"n_heads": 8, "d_model": 512, "attn_config": {"softmax_scale": 1e300}}"#),
        (
            "rope_scaling.mscale_all_dim",
            r#"{"num_attention_heads": 16, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
                "v_head_dim": 128, "rope_scaling": {"factor": 40, "mscale_all_dim": 1e300}}"#,
        ),
    ] {
        let f = config("floaty.json", json);
        for cmd in ["demo", "select"] {
            let mut args = vec![cmd, "--config", f.to_str().unwrap()];
            if cmd == "demo" {
                args.push("--cpu");
            }
            let (code, _, err) = run(&args);
            assert_eq!(code, 1, "{field} {cmd}: {err}");
            assert!(err.contains("floaty.json") && err.contains(&format!("`{field}`")), "{field} {cmd}: {err}");
        }
    }
}

#[test]
fn a_closed_stdout_ends_quietly() {
    for cmd in ["select", "presets"] {
        // The reader is gone before the first line is written: every write fails with EPIPE.
        let mut child = Command::new(ATTN)
            .arg(cmd)
            .env_remove("ATTN_BACKEND")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{cmd}: {err}");
        assert!(err.is_empty(), "{cmd} should say nothing: {err}");
    }
    // And as the user typed it, where a shell is at hand.
    if let Ok(o) = Command::new("bash").args(["-c", "set -o pipefail; \"$0\" select | head -1; \"$0\" presets | head -1", ATTN]).output() {
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(!text(&o.stderr).contains("panicked"), "{}", text(&o.stderr));
        assert_eq!(text(&o.stdout).lines().count(), 2, "{}", text(&o.stdout));
    }
}

#[test]
fn help_for_every_command() {
    for cmd in ["demo", "select", "bench", "presets"] {
        for flag in ["--help", "-h"] {
            let (code, out, err) = run(&[cmd, flag]);
            assert_eq!(code, 0, "{cmd} {flag}: {err}");
            assert!(out.starts_with(&format!("usage: attn {cmd}")), "{cmd} {flag}: {out}");
        }
        let (code, out, _) = run(&["help", cmd]);
        assert_eq!(code, 0);
        assert!(out.starts_with(&format!("usage: attn {cmd}")), "{out}");
    }
    // Help wins over anything else on the line.
    let (code, out, _) = run(&["demo", "--bogus", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--block-size"), "{out}");
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("attn demo") && out.contains("attn select") && out.contains("attn presets"), "{out}");
}

#[test]
fn options_a_command_does_not_take_are_usage_errors() {
    for (args, named) in [
        (&["select", "--cpu"][..], "--cpu"),
        (&["select", "--seed", "3"][..], "--seed"),
        (&["presets", "--model", "llama-3-8b"][..], "--model"),
        (&["demo", "--bogus"][..], "--bogus"),
        (&["demo", "stray"][..], "stray"),
        (&["select", "--dtype", "int8"][..], "int8"),
        (&["demo", "--seed"][..], "--seed"),
        (&["bench", "--sweep", "heads"][..], "heads"),
        (&["bench", "--cpu", "--batch", "0"][..], "--batch"),
        (&["bench", "--cpu", "--from", "/nonexistent/records.jsonl", "--plot", "x.svg"][..], "/nonexistent"),
        (&["demo", "--sweep", "context"][..], "--sweep"),
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(named), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
}

/// `attn select --all`'s rows: `[* ]<platform> | <model> <dtype>: <backend>`.
fn table_rows(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.contains(" | ") && l.contains(": ") && !l.trim_start().starts_with("passed over")).collect()
}

#[test]
fn select_honours_dtype_and_prints_the_model() {
    let (code, out, err) = run(&["select", "--model", "gemma-2-9b", "--dtype", "f16", "--all"]);
    assert_eq!(code, 0, "{err}");
    let rows = table_rows(&out);
    // One row per platform and layer type (Gemma-2: sliding-window and global layers).
    assert_eq!(rows.len(), 6, "one row per platform and layer type: {out}");
    assert!(rows.iter().all(|r| r.contains("gemma-2-9b f16 [")), "{out}");
    assert_eq!(rows.iter().filter(|r| r.contains("[sliding window 4096, 21 layers]")).count(), 3, "{out}");
    assert_eq!(rows.iter().filter(|r| r.contains("[full attention, 21 layers]")).count(), 3, "{out}");
    for want in ["16 query heads", "8 KV heads", "head dim 256", "sliding window 4096", "soft-cap 50", "softmax scale 0.0625", "no ALiBi"] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let (_, out, _) = run(&["select", "--model", "llama-3-8b", "--all"]);
    assert_eq!(table_rows(&out).len(), 9, "every dtype without --dtype: {out}");
    // This machine's rows are marked (here, without a GPU: the CPU's).
    assert!(table_rows(&out).iter().filter(|r| r.starts_with("* ")).all(|r| r.contains("CPU |")), "{out}");
    let (_, out, _) = run(&["select", "--dtype=bf16", "--all"]);
    assert!(table_rows(&out).iter().all(|l| l.contains(" bf16: ") || l.contains(" bf16 [")), "{out}");
}

#[test]
fn select_answers_for_this_machine_by_default() {
    // One line a preset, in its own dtype, for this machine (no GPU here: the CPU), short.
    let (code, out, err) = run(&["select"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("this machine: CPU"), "{out}");
    assert!(out.contains("llama-3-8b bf16: CPU") && out.contains("deepseek-v3 bf16: CPU"), "{out}");
    assert!(out.len() < 2000, "{} bytes: {out}", out.len());
    // `--dtype auto` is the default, said explicitly.
    let (code, auto, err) = run(&["select", "--dtype", "auto"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(auto, out);
    // The whole table marks this machine; a model no backend serves here exits 1, naming why.
    let (code, out, err) = run(&["select", "--model", "llama-3-8b", "--block-size", "3"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("llama-3-8b bf16: no backend") && out.contains("passed over CPU: block size 3 is not a power of two"), "{out}");
    assert!(err.contains("block size 3"), "{err}");
    let (code, _, err) = run(&["demo", "--cpu", "--model", "llama-3-8b", "--block-size", "3"]);
    assert_eq!(code, 1, "demo agrees: {err}");
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let o = Command::new(ATTN).args(["demo", "--cpu", "--model", "mistral-7b"]).env("RUST_LOG", "info").env_remove("ATTN_BACKEND").output().unwrap();
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("INFO") && !err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn select_json_is_one_object_a_line() {
    let (code, out, err) = run(&["select", "--json", "--all", "--model", "deepseek-v3"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 9, "3 platforms x 3 dtypes: {out}");
    for l in &lines {
        assert!(l.starts_with('{') && l.ends_with('}'), "{l}");
        for key in ["\"platform\":", "\"this_machine\":", "\"dtype\":", "\"model\":\"deepseek-v3\"", "\"backend\":", "\"passed_over\":["] {
            assert!(l.contains(key), "{key} in {l}");
        }
    }
    // An MLA model on Hopper: CUDA_MLA, CUDA_PAGED passed over for it.
    let hopper = lines.iter().find(|l| l.contains("\"platform\":\"CUDA sm_90\"") && l.contains("\"dtype\":\"bf16\"")).unwrap();
    assert!(hopper.contains("\"backend\":\"CUDA_MLA\"") && hopper.contains("{\"backend\":\"CUDA_PAGED\",\"reasons\":[\"MLA not supported\"]}"), "{hopper}");
    // The CPU's rows are this machine's (no GPU here).
    assert!(lines.iter().all(|l| l.contains("\"this_machine\":true") == l.contains("\"platform\":\"CPU\"")), "{out}");
}

#[test]
fn a_float32_checkpoint_is_served_in_bf16_unless_asked() {
    let f = config(
        "gemma2-f32.json",
        r#"{"model_type": "gemma2", "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64,
            "torch_dtype": "float32", "attn_logit_softcapping": 50.0, "query_pre_attn_scalar": 64, "sliding_window": 1024}"#,
    );
    let f = f.to_str().unwrap();
    let (code, out, err) = run(&["demo", "--cpu", "--config", f]);
    assert_eq!(code, 0, "{out}{err}");
    let dtype_line = out.lines().find(|l| l.starts_with("dtype:")).unwrap_or_else(|| panic!("{out}"));
    assert!(dtype_line.starts_with("dtype: bf16") && dtype_line.contains("f32"), "{dtype_line}");
    assert!(out.contains("supports bf16"), "{out}");
    let (code, out, err) = run(&["demo", "--cpu", "--config", f, "--dtype", "f32"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dtype: f32 (--dtype f32"), "{out}");
    assert!(out.contains("supports f32"), "{out}");
}

#[test]
fn demo_says_what_it_understood_and_what_the_cache_counts() {
    let (code, out, err) = run(&["demo", "--cpu", "--model", "mistral-7b"]);
    assert_eq!(code, 0, "{out}{err}");
    for want in ["32 query heads", "8 KV heads", "head dim 128", "sliding window 4096", "no soft-cap", "softmax scale", "no ALiBi"] {
        assert!(out.contains(want), "{want}: {out}");
    }
    assert!(out.contains("blocks x 16 tokens, each token 8 KV heads x head dim 128"), "{out}");
    assert!(!out.contains("device"), "a CPU run has no host-device copies: {out}");
}

#[test]
fn an_mla_model_runs_the_mla_path() {
    let (code, out, err) = run(&["demo", "--cpu", "--model", "deepseek-v3"]);
    assert_eq!(code, 0, "{out}{err}");
    for want in ["128 query heads", "MLA", "kv_lora_rank 512", "qk_rope_head_dim 64", "qk_nope_head_dim 128", "v_head_dim 128"] {
        assert!(out.contains(want), "{want}: {out}");
    }
    assert!(out.contains("one latent head of 512 + 64 = 576 dims"), "{out}");
    assert!(out.contains("MLA absorbed decode"), "{out}");
    // Through the layer in the model's dtype, as the multi-head demo, with a plain verdict.
    assert!(out.contains("cache write verified") && out.contains("check: PASS") && out.contains("tolerance 1e-2 for bf16"), "{out}");
    // A backend without MLA is refused, never run as MHA.
    let o = Command::new(ATTN).args(["demo", "--cpu", "--model", "deepseek-v3"]).env("ATTN_BACKEND", "CUDA_PAGED").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("MLA"), "{}", text(&o.stderr));
    assert!(!text(&o.stdout).contains("result:"), "{}", text(&o.stdout));
}

#[test]
fn an_fp8_kv_cache_runs_the_demo_and_is_refused_where_unsupported() {
    // The demo on an fp8 cache: the step's cache write checked against the host quantizer,
    // the output against the oracle over the dequantized cache.
    let (code, out, err) = run(&["demo", "--cpu", "--model", "mistral-7b", "--kv-cache-dtype", "fp8"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("KV cache: fp8_e4m3") && out.contains("cache write verified"), "{out}");
    // `fp8` is vLLM's alias; an unknown name is a usage error naming the choices.
    let (code, _, err) = run(&["select", "--kv-cache-dtype", "fp4"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--kv-cache-dtype") && err.contains("fp8_e4m3"), "{err}");
    // MLA's fp8 latent rows: the demo checks this step's rows against the host quantizer and
    // the output against the oracle over the rows dequantized; f32 (no 16-bit rope) is refused.
    let (code, out, err) = run(&["demo", "--cpu", "--model", "deepseek-v3", "--kv-cache-dtype", "fp8"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("KV cache: fp8_e4m3") && out.contains("cache write verified") && out.contains("PASS"), "{out}");
    let (code, _, err) = run(&["demo", "--cpu", "--model", "deepseek-v3", "--kv-cache-dtype", "fp8", "--dtype", "f32"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("16-bit type"), "{err}");
    // The selector's table for an fp8 cache: the paged backend serves it on sm_90 and sm_80.
    let (code, out, err) = run(&["select", "--model", "llama-3-8b", "--dtype", "bf16", "--kv-cache-dtype", "fp8", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CUDA sm_90 | llama-3-8b bf16: CUDA_PAGED") && out.contains("KV cache: fp8_e4m3"), "{out}");
}

#[test]
fn select_prints_each_layer_type_of_the_models_people_serve_now() {
    // gpt-oss: sinks on every layer, alternating a 128-token window and full attention.
    let (code, out, err) = run(&["select", "--model", "gpt-oss-20b"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sliding window 128 on 12 layers, full attention on 12 layers, attention sinks"), "{out}");
    assert!(out.contains("gpt-oss-20b bf16 [sliding window 128, 12 layers]: CPU") && out.contains("gpt-oss-20b bf16 [full attention, 12 layers]: CPU"), "{out}");
    assert!(out.contains("why: ") && out.contains("attention sinks, block size 16"), "{out}");
    // Llama 4 from a config file: the text model under text_config, chunks on 3 of 4 layers.
    let path = config(
        "llama4.json",
        r#"{"model_type": "llama4", "text_config": {"num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
            "num_hidden_layers": 8, "attention_chunk_size": 8192, "no_rope_layers": []}}"#,
    );
    let (code, out, err) = run(&["select", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[chunked local attention, chunks of 8192, 6 layers]: CPU") && out.contains("[full attention, 2 layers]: CPU"), "{out}");
    // A layer type the config cannot back is an error naming the field.
    let path = config("bad-types.json", r#"{"num_attention_heads": 8, "hidden_size": 512, "layer_types": ["sliding_attention"]}"#);
    let (code, _, err) = run(&["select", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("layer_types") && err.contains("no sliding_window"), "{err}");
}

/// A temp path of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attn-cli-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn bench_json_lines_are_records_of_the_named_shape() {
    let (code, out, err) = run(&["bench", "--cpu", "--model", "gpt-oss-20b", "--batch", "2", "--context", "96", "--json", "--reps", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_no_panic(&err);
    let lines: Vec<&str> = out.lines().collect();
    // gpt-oss: its sliding and its full layers, one workload each; every line a record.
    assert_eq!(lines.len(), 2, "{out}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert_eq!(v["bench"], "decode");
        assert_eq!(v["backend"], "CPU");
        assert!(v["workload"].as_str().unwrap().starts_with("gpt-oss-20b ("), "{l}");
        assert!(v["workload"].as_str().unwrap().ends_with("b2 c96 q1"), "{l}");
        assert!(v["median_us"].as_f64().unwrap() > 0.0 && v["gbps"].as_f64().unwrap() > 0.0, "{l}");
        assert_eq!(v["ceiling"], "copy");
    }
}

#[test]
fn bench_table_then_plot_of_a_sweep_and_a_redraw_from_json() {
    let svg = scratch("sweep.svg");
    let (code, out, err) = run(&["bench", "--cpu", "--model", "llama-3-8b", "--batch", "1", "--context", "64", "--sweep", "context=32,64,128", "--reps", "1", "--plot", svg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("| workload |") && out.contains("(context 128)"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("| llama-3-8b b1 q1 (context")).count(), 3, "{out}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.contains("time against context") && drawn.contains("llama-3-8b b1 q1: CPU"), "{}", &drawn[..200.min(drawn.len())]);
    // JSON lines recorded, then drawn again elsewhere (no device needed), with peers beside.
    let (code, json, err) = run(&["bench", "--cpu", "--model", "qwen3-32b", "--batch", "2", "--context", "64", "--queries", "2", "--json", "--reps", "1"]);
    assert_eq!(code, 0, "{err}");
    let recs = scratch("recs.jsonl");
    std::fs::write(&recs, format!("not a record\n{json}")).unwrap();
    let peers = scratch("peers.json");
    std::fs::write(&peers, r#"{"ceilings":{"copy_GBps":100.0,"mm_TFLOPs":800.0},"results":[{"workload":"qwen3-32b b2 c64 q2","system":"a peer","GBps":7.5}]}"#).unwrap();
    let bars = scratch("bars.svg");
    let (code, out, err) = run(&["bench", "--from", recs.to_str().unwrap(), "--plot", bars.to_str().unwrap(), "--peers", peers.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 records"), "{out}");
    let drawn = std::fs::read_to_string(&bars).unwrap();
    assert!(drawn.contains("qwen3-32b b2 c64 q2") && drawn.contains("best peer"), "bars with the peer");
}

#[test]
fn bench_refuses_unknown_workloads_and_backends_naming_them() {
    let (code, _, err) = run(&["bench", "--cpu", "Q7"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown workload `Q7`") && err.contains("M5"), "{err}");
    let (code, _, err) = run(&["bench", "--cpu", "--backend", "FLASHINFER", "--context", "64"]);
    assert_eq!(code, 2);
    assert!(err.contains("FLASHINFER"), "{err}");
    // A GPU backend on the CPU runner: an error saying what it needs, not a panic.
    let (code, _, err) = run(&["bench", "--cpu", "--backend", "CUDA_PAGED", "--context", "64", "--batch", "1"]);
    assert_eq!(code, 1, "{err}");
    assert_no_panic(&err);
    assert!(err.contains("CUDA"), "{err}");
}
