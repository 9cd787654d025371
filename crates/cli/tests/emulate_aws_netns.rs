//! The hop limit over a real routed hop: `imdsguard emulate --cloud aws` in an isolated
//! network namespace ("node"), a client in a second one ("pod") behind a router in a
//! third, IPv4 and IPv6. The token answer leaves with the hop limit as its IP TTL / hop
//! limit, so with `--hop-limit 1` it dies at the router (as on EC2) while IMDSv1 answers
//! still arrive, and with `--hop-limit 2` the pod gets its token. Every namespace is the
//! test's own; nothing leaves the machine.

use imdsguard_testkit::{Netns, require};

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");

const SCRIPT: &str = r#"
set -u
R=; P=; E1=; E2=
out=$(mktemp -d)
cleanup() { kill $E1 $E2 $R $P 2>/dev/null; wait 2>/dev/null; rm -rf "$out"; }
trap cleanup EXIT
unshare --net sleep 600 & R=$!
unshare --net sleep 600 & P=$!
me=$(readlink /proc/self/ns/net)
for pid in $R $P; do
  for _ in $(seq 200); do [ "$(readlink /proc/$pid/ns/net)" != "$me" ] && break; sleep 0.02; done
done
inR() { nsenter --net=/proc/$R/ns/net "$@"; }
inP() { nsenter --net=/proc/$P/ns/net "$@"; }
ip link add s0 type veth peer name r0 netns $R || exit 90
inR ip link add r1 type veth peer name p0 netns $P || exit 90
ip addr add 10.0.1.1/24 dev s0; ip -6 addr add fd00:1::1/64 dev s0 nodad; ip link set s0 up
ip route add 10.0.2.0/24 via 10.0.1.2; ip -6 route add fd00:2::/64 via fd00:1::2
inR ip link set lo up
inR ip addr add 10.0.1.2/24 dev r0; inR ip -6 addr add fd00:1::2/64 dev r0 nodad; inR ip link set r0 up
inR ip addr add 10.0.2.1/24 dev r1; inR ip -6 addr add fd00:2::1/64 dev r1 nodad; inR ip link set r1 up
inR sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding' || exit 90
inP ip link set lo up
inP ip addr add 10.0.2.2/24 dev p0; inP ip -6 addr add fd00:2::2/64 dev p0 nodad; inP ip link set p0 up
inP ip route add default via 10.0.2.1; inP ip -6 route add default via fd00:2::1
"$BIN" emulate --cloud aws --listen 10.0.1.1:8001 --listen '[fd00:1::1]:8001' --hop-limit 1 --seed 1 >"$out/e1" 2>/dev/null & E1=$!
"$BIN" emulate --cloud aws --listen 10.0.1.1:8002 --listen '[fd00:1::1]:8002' --hop-limit 2 --seed 1 >"$out/e2" 2>/dev/null & E2=$!
for _ in $(seq 200); do
  [ "$(cat "$out/e1" "$out/e2" | grep -c '^imds ')" -eq 4 ] && break; sleep 0.05
done
[ "$(cat "$out/e1" "$out/e2" | grep -c '^imds ')" -eq 4 ] || exit 91
TTL='X-aws-ec2-metadata-token-ttl-seconds: 60'
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$@"; echo " rc=$?"; }
pcode() { inP curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$@"; echo " rc=$?"; }
for fam in v4 v6; do
  if [ $fam = v4 ]; then H=10.0.1.1; else H='[fd00:1::1]'; fi
  # The route works both ways (retried while links come up).
  for _ in $(seq 50); do [ "$(pcode -g "http://$H:8002/latest/meta-data/instance-id")" = "200 rc=0" ] && break; sleep 0.1; done
  echo "$fam v1_from_pod_limit1=$(pcode -g "http://$H:8001/latest/meta-data/instance-id")"
  echo "$fam put_from_pod_limit1=$(pcode -g -X PUT -H "$TTL" "http://$H:8001/latest/api/token")"
  echo "$fam put_on_node_limit1=$(code -g -X PUT -H "$TTL" "http://$H:8001/latest/api/token")"
  TOKEN=$(inP curl -s -g --max-time 3 -X PUT -H "$TTL" "http://$H:8002/latest/api/token")
  echo "$fam put_from_pod_limit2=$([ -n "$TOKEN" ] && echo got || echo none)"
  echo "$fam creds_with_token=$(inP curl -s -g -o /dev/null -w '%{http_code}' --max-time 3 -H "X-aws-ec2-metadata-token: $TOKEN" "http://$H:8002/latest/meta-data/iam/security-credentials/imdsguard-demo-node-role")"
done
"#;

#[test]
#[ignore = "needs netns"]
fn the_token_answer_dies_past_the_hop_limit_imdsv1_does_not() {
    require(
        "the_token_answer_dies_past_the_hop_limit_imdsv1_does_not",
        &["ip", "unshare", "nsenter", "curl"],
    );
    let ns = Netns::require("the_token_answer_dies_past_the_hop_limit_imdsv1_does_not");
    let out = ns.run(SCRIPT, &[("BIN", BIN)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status.code()
    );
    for fam in ["v4", "v6"] {
        let get = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{fam} {key}=")))
                .unwrap_or_else(|| panic!("{fam} {key} missing:\n{stdout}\n{stderr}"))
        };
        assert_eq!(
            get("v1_from_pod_limit1"),
            "200 rc=0",
            "IMDSv1 at any hop limit"
        );
        // curl's 28: the answer never arrived (timed out), the token died at the router.
        assert!(
            get("put_from_pod_limit1").ends_with("rc=28"),
            "{fam}: the token answer must not reach the pod:\n{stdout}"
        );
        assert_eq!(get("put_on_node_limit1"), "200 rc=0", "no hop on the node");
        assert_eq!(get("put_from_pod_limit2"), "got");
        assert_eq!(get("creds_with_token"), "200");
    }
}
