//! What the black-box tests of `imdsguard proxy` and `imdsguard report` share: the access
//! rules they run the proxy with, the token paths they ask for, and the shell that starts
//! `imdsguard emulate` on 127.0.0.1:8169 inside their namespace (`proxy_cli`, `report`).

pub const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");

/// The default emulator config's kubelet identity (crates/emulator/src/default-config.yaml).
pub const KUBELET_CLIENT_ID: &str = "2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67";

pub const ARM: &str = "https%3A%2F%2Fmanagement.azure.com%2F";
pub const VAULT: &str = "https%3A%2F%2Fvault.azure.net";

/// `payments/api` may get ARM tokens for the kubelet identity; every pod may read
/// `/metadata/versions`.
pub fn rules() -> String {
    format!(
        r#"rules:
  - name: payments-api-arm
    subjects:
      - namespace: payments
        serviceAccount: api
    token:
      resources: [https://management.azure.com/]
      identities:
        - clientId: {KUBELET_CLIENT_ID}
  - name: basics
    subjects: [{{namespace: "*"}}]
    paths: [/metadata/versions]
"#
    )
}

/// A managed-identity token request for `resource` (URL-encoded) and the kubelet identity.
pub fn token_path(resource: &str) -> String {
    format!(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}&client_id={KUBELET_CLIENT_ID}"
    )
}

/// Shell (`set -u`, `$BIN` and `$DIR` set): starts the emulator on 127.0.0.1:8169
/// (`$emu`; `$px` for the proxy the script starts next; both killed on exit) and defines
/// `started FILE WORD NAME [LOG]`, which waits up to 5 s for WORD in FILE and otherwise
/// says NAME did not start (LOG after it) and exits 97. Waits for the emulator.
pub const START_EMULATOR: &str = r#"
set -u
started() {
    for _ in $(seq 100); do grep -q "$2" "$1" && return 0; sleep 0.05; done
    echo "$3 did not start" >&2; [ -n "${4:-}" ] && cat "$4" >&2; exit 97
}
"$BIN" emulate --listen 127.0.0.1:8169 --seed 7 --no-throttle >"$DIR/emulate.out" 2>/dev/null &
emu=$!
px=
trap 'kill $emu $px 2>/dev/null' EXIT
started "$DIR/emulate.out" imds emulator
"#;
