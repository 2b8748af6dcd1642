//! The README's demo command, run as a user runs it: the `holdfast-loadtest demo` process
//! against a gateway on its defaults (here started in-process on ports the kernel picks).

use std::process::Command;

use holdfast_gateway::config::Config;

#[test]
fn readme_demo_connects_clients_and_delivers_pushes() {
    let sets = ["listen.addr=127.0.0.1:0".to_owned(), "http.addr=127.0.0.1:0".to_owned()];
    let cfg = Config::load(None, &sets, Vec::<(String, String)>::new()).unwrap();
    let gw = holdfast_gateway::start_default(cfg).unwrap();
    let out_dir = std::env::temp_dir().join(format!("hf-demo-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast-loadtest"))
        .args(["demo", "--addr", &gw.tcp_addr.to_string(), "--http", &gw.http_addr.to_string()])
        .args(["--clients", "200", "--secs", "1", "--out", out_dir.to_str().unwrap()])
        .env_remove("HOLDFAST_JWT_SECRET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo ok"), "{stdout}");
    assert_eq!(stdout.matches("payload=\"hello everyone\"").count(), 3, "{stdout}");
    // The load part ends with a summary table and the report's path.
    assert!(stdout.contains("Summary"), "{stdout}");
    let errors = stdout.lines().find(|l| l.trim_start().starts_with("errors ")).unwrap();
    assert!(errors.trim_end().ends_with("none"), "{stdout}");
    let report = out_dir.join("report.html");
    assert!(stdout.contains(&report.display().to_string()), "{stdout}");
    assert!(std::fs::metadata(&report).unwrap().len() > 10_000);
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["totals"]["authenticated"], 200);
    assert_eq!(result["totals"]["push_delivered"], result["totals"]["push_received"]);
    // The three demo clients acknowledge before they log out; the load clients close
    // after acknowledging too: nothing is reported unacknowledged.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(gw.metrics().pushes_unacked_on_close.get(), 0);
    gw.shutdown();
    let _ = std::fs::remove_dir_all(out_dir);
}

#[test]
fn token_command_mints_a_token_the_gateway_accepts() {
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast-loadtest"))
        .args(["token", "--user", "zoe", "--secret", "s3cret"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let auth = holdfast_gateway::config::AuthConfig {
        secret: Some("s3cret".into()),
        ..Default::default()
    };
    let verifier = holdfast_gateway::auth::Verifier::from_config(&auth).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(verifier.verify(token.trim(), now).unwrap().sub, "zoe");
}
