//! `roster serve` refuses to start with one clear line on stderr and a
//! non-zero exit when it cannot: port taken, data dir unusable or already in
//! use, unsupported URL scheme.

use std::process::Command;

use crate::roster::Roster;

/// Runs `roster serve` with `args` and returns its exit code and stderr.
fn serve(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run roster");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(code: i32, stderr: &str, wanted: &str) {
    assert_eq!(code, 1, "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("roster: error: "), "{stderr}");
    assert!(lines[0].contains(wanted), "{:?} lacks {wanted:?}", lines[0]);
}

#[test]
fn port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", taken.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = serve(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen-client-urls",
        &url,
    ]);
    assert_one_line_error(code, &err, "Address already in use");
    assert!(err.contains("cannot listen on"), "{err}");
}

#[test]
fn data_dir_that_cannot_be_created() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let below_a_file = file.path().join("data");
    let (code, err) = serve(&[
        "--data-dir",
        below_a_file.to_str().unwrap(),
        "--listen-client-urls",
        "http://127.0.0.1:0",
    ]);
    assert_one_line_error(code, &err, "cannot create data dir");
}

#[test]
fn data_dir_already_served() {
    let running = Roster::start();
    let (code, err) = serve(&[
        "--data-dir",
        running.data_dir.to_str().unwrap(),
        "--listen-client-urls",
        "http://127.0.0.1:0",
    ]);
    assert_one_line_error(code, &err, "cannot open database");
}

#[test]
fn unsupported_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = serve(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen-client-urls",
        "https://127.0.0.1:0",
    ]);
    assert_one_line_error(code, &err, "scheme https is not supported");
}
