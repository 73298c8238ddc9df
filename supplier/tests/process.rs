//! `silt-supplier` as an operator runs it: init, run with flags and
//! environment variables, metrics, and a graceful stop on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn supplier() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_silt-supplier"));
    command
        .env_remove("SILT_SUPPLIER_DATA")
        .env_remove("SILT_SUPPLIER_CONFIG")
        // The supplier tunes its allocator unless this sets it.
        .env_remove("GLIBC_TUNABLES")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Starts `command` logging at info level and follows its stderr on a
/// thread, passing every line on.
fn follow(command: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = command
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a line containing `needle` and returns it. If none comes, the
/// panic shows what the process said instead.
fn wait_for(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(e) => panic!(
                "no line with {needle:?} ({e}); it said:\n{}",
                seen.join("\n")
            ),
        }
    }
}

fn field(line: &str, name: &str) -> String {
    line.split(&format!("{name}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned()
}

fn http_get(addr: &str) -> String {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn init_run_with_flags_and_env_then_stop_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let init = supplier()
        .args([
            "init",
            "--data",
            data_arg,
            "--name",
            "store1",
            "--id-server",
            "127.0.0.1:7700",
        ])
        .args(["--capacity", "2 GiB", "--key-size", "2048"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let text = String::from_utf8_lossy(&init.stdout);
    assert!(text.contains("store1@127.0.0.1"), "{text}");
    let config = std::fs::read_to_string(data.join("supplier.toml")).unwrap();
    assert!(
        config.contains("capacity = \"2.0 GiB\"")
            || config.contains("2 GiB")
            || config.contains("2147483648"),
        "{config}"
    );
    let again = supplier()
        .args([
            "init",
            "--data",
            data_arg,
            "--name",
            "store1",
            "--id-server",
            "127.0.0.1:7700",
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    // The listen address comes from the environment, metrics from a flag.
    let (mut child, lines) = follow(
        supplier()
            .args([
                "run",
                "--data",
                data_arg,
                "--metrics",
                "127.0.0.1:0",
                "--identity-server",
            ])
            .env("SILT_SUPPLIER_LISTEN", "127.0.0.1:0"),
    );
    let tuned = wait_for(&lines, "allocator tuned");
    assert_eq!(field(&tuned, "mmap_threshold"), (32 << 20).to_string());
    let metrics = field(&wait_for(&lines, "metrics listening"), "addr");
    let listening = wait_for(&lines, "supplier listening");
    assert!(
        field(&listening, "addr").starts_with("127.0.0.1:"),
        "{listening}"
    );
    let response = http_get(&metrics);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("silt_supplier_stored_bytes"),
        "{response}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for(&lines, "shutting down");
    wait_for(&lines, "supplier stopped");
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn bad_configuration_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\ncapasity = \"1 GiB\"\n").unwrap();
    let output = supplier()
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("capasity"), "{err}");

    // A data directory that was never initialised.
    let output = supplier()
        .args([
            "run",
            "--data",
            dir.path().join("none").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("silt-supplier init"), "{err}");
}

#[test]
fn malloc_settings_in_glibc_tunables_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let init = supplier()
        .args(["init", "--data", data_arg, "--name", "store2"])
        .args(["--id-server", "127.0.0.1:7700", "--key-size", "2048"])
        .output()
        .unwrap();
    assert!(init.status.success());
    let (mut child, lines) = follow(
        supplier()
            .args(["run", "--data", data_arg, "--listen", "127.0.0.1:0"])
            .env("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576"),
    );
    wait_for(&lines, "keeping the malloc settings of GLIBC_TUNABLES");
    wait_for(&lines, "supplier listening");
    child.kill().unwrap();
    child.wait().unwrap();
}
