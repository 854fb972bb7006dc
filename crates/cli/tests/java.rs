//! A real JVM trusts the server's HTTPS certificate through the trust store `msnp24 cert export
//! --format pkcs12` writes, with no password, as a Java client of the time is pointed at it
//! (`docs/clients.md`). Needs `java` with its single-file source launcher (Debian's
//! `openjdk-17-jre-headless`, which `scripts/test` installs).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{free_port, Serve, BIN};

const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java/TrustProbe.java");

/// `msnp24 serve` with HTTPS on a loopback port and the default certificate names.
fn serve_https(dir: &Path) -> (Serve, u16) {
    let (msnp, http, https) = (free_port(), free_port(), free_port());
    let mut child = Command::new(BIN)
        .args(["serve", "--no-tls", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{msnp}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--https-listen", &format!("127.0.0.1:{https}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("msnp24 listening"), "{line}");
    let serve = Serve {
        child,
        msnp: ([127, 0, 0, 1], msnp).into(),
        http: format!("http://127.0.0.1:{http}"),
    };
    (serve, https)
}

fn export(dir: &Path, out: &Path, password: Option<&str>) {
    let mut cmd = Command::new(BIN);
    cmd.args(["cert", "export", "--format", "pkcs12", "--data-dir"])
        .arg(dir)
        .arg("--out")
        .arg(out);
    if let Some(p) = password {
        cmd.args(["--password", p]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{o:?}");
}

/// Runs the probe in a JVM with these system properties; its one line of output.
fn probe(dir: &Path, url: &str, props: &[String]) -> String {
    // The client resolves Microsoft's host name to the server as its hosts file would make it.
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 login.live.com api.skype.com\n").unwrap();
    let out = Command::new("timeout")
        .args(["180", "java"])
        .arg(format!("-Djdk.net.hosts.file={}", hosts.display()))
        .args(props)
        .arg(PROBE)
        .arg(url)
        .output()
        .expect("running java: install openjdk-17-jre-headless (scripts/test does)");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        stdout.starts_with("status ") || stdout.starts_with("tls-failed "),
        "java did not run the probe: {out:?}"
    );
    stdout
}

#[test]
fn a_jvm_trusts_the_server_through_the_exported_pkcs12_with_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_serve, port) = serve_https(&data);
    let url = format!(
        "https://login.live.com:{port}/oauth20_authorize.srf?client_id=00000000480BC46C&scope=service::lw.skype.com::MBI_SSL&response_type=token&redirect_uri=https://login.live.com/oauth20_desktop.srf"
    );
    let store = |p: &Path| format!("-Djavax.net.ssl.trustStore={}", p.display());

    // The file as an operator makes it, given to the JVM with no password at all.
    let open = dir.path().join("msnp24-ca.p12");
    export(&data, &open, None);
    let seen = probe(dir.path(), &url, &[store(&open)]);
    assert!(seen.starts_with("status 200 "), "{seen}");

    // Without it, the JVM's own CAs do not trust the server: the store is what made it work.
    let seen = probe(dir.path(), &url, &[]);
    assert!(seen.starts_with("tls-failed "), "{seen}");

    // The password-protected file still works when its password is given.
    let locked = dir.path().join("locked.p12");
    export(&data, &locked, Some("changeit2"));
    let seen = probe(
        dir.path(),
        &url,
        &[
            store(&locked),
            "-Djavax.net.ssl.trustStorePassword=changeit2".into(),
        ],
    );
    assert!(seen.starts_with("status 200 "), "{seen}");
}
