//! Black-box tests of how `imdsguard proxy` reads its rules and pods files: a FIFO in
//! place of a file never blocks serving, reloading or shutdown; an empty or
//! comment-only file is refused unless allowed; a file renamed over the old one is
//! picked up. The serving tests run the binary on 127.0.0.1 inside a network namespace
//! of their own (only `lo`), in front of `imdsguard emulate` on loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imdsguard_testkit::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");

const RULES: &str = "rules:
  - name: web-location
    subjects: [{namespace: web}]
    paths: [/metadata/instance/compute/location]
  - name: basics
    subjects: [{namespace: '*'}]
    paths: [/metadata/versions]
";

/// `basics` gone: web may read its location only.
const RULES_WITHOUT_BASICS: &str = "rules:
  - name: web-location
    subjects: [{namespace: web}]
    paths: [/metadata/instance/compute/location]
";

const PODS: &str = "- {ip: 127.0.0.3, namespace: web, name: frontend-0}\n";

/// GET from a loopback source address; prints `STATUS` (0: no answer within 3 s).
const CLIENT: &str = r#"
import http.client, sys
source, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3, source_address=(source, 0))
    c.request("GET", path, headers={"Metadata": "true"})
    r = c.getresponse()
    body = r.read().decode("utf-8", "replace").strip().replace("\n", " ")
    print(r.status, body)
except Exception as e:
    print(0, type(e).__name__)
"#;

/// A scratch directory with the rules, pods and client files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "imdsguard-proxy-files-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
        std::fs::write(dir.join("rules-without-basics.yaml"), RULES_WITHOUT_BASICS).unwrap();
        std::fs::write(dir.join("pods.yaml"), PODS).unwrap();
        std::fs::write(dir.join("client.py"), CLIENT).unwrap();
        Dir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The emulator and the proxy (reloading every 300 ms) in a fresh namespace; `script`
/// runs with `req SOURCE PATH`, `admin PATH` and `replace SRC DEST` (a new file renamed
/// over DEST) defined; then SIGTERM, `proxy-exit N` (or `proxy-hung`), and the proxy's
/// standard error after `== stderr`.
const PRELUDE: &str = r#"
set -u
"$BIN" emulate --listen 127.0.0.1:8169 --seed 7 --no-throttle >"$DIR/emulate.out" 2>/dev/null &
emu=$!
px=
trap 'kill -9 $emu $px 2>/dev/null' EXIT
for _ in $(seq 100); do grep -q imds "$DIR/emulate.out" && break; sleep 0.05; done
grep -q imds "$DIR/emulate.out" || { echo "emulator did not start" >&2; exit 97; }
"$BIN" proxy --listen 127.0.0.1:8170 --admin-listen 127.0.0.1:9170 \
    --upstream http://127.0.0.1:8169 --rules "$DIR/rules.yaml" --pods "$DIR/pods.yaml" \
    --reload-interval 300ms >"$DIR/proxy.out" 2>"$DIR/proxy.err" &
px=$!
for _ in $(seq 100); do grep -q admin "$DIR/proxy.out" && break; sleep 0.05; done
grep -q admin "$DIR/proxy.out" || { echo "proxy did not start" >&2; cat "$DIR/proxy.err" >&2; exit 97; }
req() { python3 "$DIR/client.py" "$1" 8170 "$2"; }
admin() { python3 "$DIR/client.py" 127.0.0.1 9170 "$1"; }
replace() { cp "$1" "$2.tmp" && mv -f "$2.tmp" "$2"; }
"#;

const EPILOGUE: &str = r#"
kill -TERM $px
for _ in $(seq 100); do kill -0 $px 2>/dev/null || break; sleep 0.1; done
if kill -0 $px 2>/dev/null; then echo "proxy-hung"; else wait $px; echo "proxy-exit $?"; fi
px=
echo "== stderr"
cat "$DIR/proxy.err"
"#;

fn run_in_namespace(test: &str, script: &str) -> String {
    let ns = Netns::require(test);
    let dir = Dir::new(test);
    let out = ns.run(
        &format!("{PRELUDE}{script}{EPILOGUE}"),
        &[
            ("BIN", BIN),
            ("DIR", dir.path().to_str().expect("a UTF-8 temp dir")),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    stdout
}

/// The line after the marker line `== NAME`.
fn answer<'a>(out: &'a str, name: &str) -> &'a str {
    let marker = format!("== {name}");
    out.lines()
        .skip_while(|l| *l != marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no answer for {name}:\n{out}"))
}

#[test]
#[ignore = "needs netns"]
fn a_fifo_in_place_of_the_rules_file_never_blocks_serving_reloads_or_sigterm() {
    // The reproduction of issue 7: rules.yaml replaced by a FIFO, then SIGHUP (and the
    // periodic change check) read it.
    let script = r#"
echo "== ready"; admin /readyz
rm "$DIR/rules.yaml"; mkfifo "$DIR/rules.yaml"; kill -HUP $px
sleep 1.2
echo "== healthz"; admin /healthz
echo "== versions-kept"; req 127.0.0.3 /metadata/versions
echo "== metrics"; admin /metrics | tr ' ' '\n' | grep -A1 'reloads_total{file="rules",result="error"}' | tr '\n' ' '; echo
replace "$DIR/rules-without-basics.yaml" "$DIR/rules.yaml"
sleep 1.2
echo "== versions-after-rename"; req 127.0.0.3 /metadata/versions
echo "== location"; req 127.0.0.3 '/metadata/instance/compute/location?api-version=2021-02-01&format=text'
mkfifo "$DIR/pods.fifo"; mv -f "$DIR/pods.fifo" "$DIR/pods.yaml"
rm "$DIR/rules.yaml"; mkfifo "$DIR/rules.yaml"; kill -HUP $px
sleep 0.5
"#;
    let out = run_in_namespace("fifo_rules", script);
    let ready = answer(&out, "ready");
    assert!(ready.starts_with("200 ready: 2 access rules"), "{ready}");
    assert!(answer(&out, "healthz").starts_with("200"), "{out}");
    // The FIFO is refused and counted; the rules in force stay.
    assert!(answer(&out, "versions-kept").starts_with("200"), "{out}");
    let errors = answer(&out, "metrics");
    assert!(
        errors.contains(r#"result="error"}"#) && !errors.ends_with(" 0 "),
        "{errors}"
    );
    // A regular file renamed over the FIFO is picked up.
    let after = answer(&out, "versions-after-rename");
    assert!(after.starts_with("403"), "{after}");
    assert!(answer(&out, "location").starts_with("200"), "{out}");
    // SIGTERM with FIFOs in place of both files: a clean exit.
    assert!(out.contains("proxy-exit 0"), "{out}");
    assert!(
        out.contains("FIFO") && out.contains("not a regular file"),
        "the log names the problem:\n{out}"
    );
}

#[test]
#[ignore = "needs netns"]
fn an_emptied_rules_file_is_refused_and_the_rules_in_force_stay() {
    let script = r#"
printf '# rules: moved\n' >"$DIR/empty.yaml"; replace "$DIR/empty.yaml" "$DIR/rules.yaml"
sleep 1
echo "== versions"; req 127.0.0.3 /metadata/versions
echo "== ready"; admin /readyz
printf '' >"$DIR/empty-pods.yaml"; replace "$DIR/empty-pods.yaml" "$DIR/pods.yaml"
sleep 1
echo "== still-known"; req 127.0.0.3 /metadata/versions
"#;
    let out = run_in_namespace("empty_rules", script);
    assert!(answer(&out, "versions").starts_with("200"), "{out}");
    let ready = answer(&out, "ready");
    assert!(ready.starts_with("200 ready: 2 access rules"), "{ready}");
    assert!(answer(&out, "still-known").starts_with("200"), "{out}");
    assert!(out.contains("--allow-empty-rules"), "{out}");
    assert!(out.contains("--allow-empty-pods"), "{out}");
    assert!(out.contains("proxy-exit 0"), "{out}");
}

/// `imdsguard proxy --check`: only reads files, no listener, so no namespace needed.
/// Fails (rather than hangs) when the binary has not answered within 10 s.
fn check(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(["proxy", "--check"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("imdsguard runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("imdsguard proxy --check {args:?} blocked");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn at_start_a_fifo_a_directory_and_empty_files_are_refused_with_what_to_do() {
    let dir = Dir::new("check");
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let status = Command::new("mkfifo").arg(p("fifo.yaml")).status().unwrap();
    assert!(status.success());

    let (code, _, stderr) = check(&["--rules", &p("fifo.yaml")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("fifo.yaml") && stderr.contains("FIFO") && stderr.contains("rename"),
        "{stderr}"
    );
    let (code, _, stderr) = check(&["--rules", &p("rules.yaml"), "--pods", &p("fifo.yaml")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("FIFO"), "{stderr}");
    let (code, _, stderr) = check(&["--rules", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("a directory"), "{stderr}");

    // Empty, comment-only, or an empty list: refused, unless allowed.
    for (name, text) in [
        ("empty.yaml", ""),
        ("comments.yaml", "# rules:\n#  - name: a\n"),
        ("none.yaml", "rules: []\n"),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
        let (code, _, stderr) = check(&["--rules", &p(name)]);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains("--allow-empty-rules"),
            "{name}: {stderr}"
        );
        let (code, stdout, stderr) = check(&["--rules", &p(name), "--allow-empty-rules"]);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert!(stdout.contains("0 rule(s)"), "{stdout}");
    }
    std::fs::write(dir.path().join("no-pods.yaml"), "[]\n").unwrap();
    let (code, _, stderr) = check(&["--rules", &p("rules.yaml"), "--pods", &p("no-pods.yaml")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--allow-empty-pods"), "{stderr}");
    let (code, stdout, stderr) = check(&[
        "--rules",
        &p("rules.yaml"),
        "--pods",
        &p("no-pods.yaml"),
        "--allow-empty-pods",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("0 address(es)"), "{stdout}");

    // A symlink to a regular file (a ConfigMap mount) is read.
    std::os::unix::fs::symlink(dir.path().join("rules.yaml"), dir.path().join("link.yaml"))
        .unwrap();
    let (code, stdout, stderr) = check(&["--rules", &p("link.yaml")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("2 rule(s)"), "{stdout}");
}
