//! The README's demo command, run as a user runs it: the `holdfast-loadtest demo` process
//! against a gateway on its defaults (here started in-process on ports the kernel picks).

use std::process::Command;

use holdfast_gateway::config::Config;

#[test]
fn readme_demo_connects_clients_and_delivers_pushes() {
    let sets = ["listen.addr=127.0.0.1:0".to_owned(), "http.addr=127.0.0.1:0".to_owned()];
    let cfg = Config::load(None, &sets, Vec::<(String, String)>::new()).unwrap();
    let gw = holdfast_gateway::start_default(cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast-loadtest"))
        .args(["demo", "--addr", &gw.tcp_addr.to_string(), "--http", &gw.http_addr.to_string()])
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
    // The demo clients acknowledge before they log out: nothing is reported unacknowledged.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(gw.metrics().pushes_unacked_on_close.get(), 0);
    assert_eq!(gw.metrics().pushes_acked.get(), 5);
    gw.shutdown();
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
