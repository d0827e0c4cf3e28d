//! etcdctl conformance: one etcdctl script, run against the real etcd and
//! against Roster, must give the same results.
//!
//! The script, `conformance/kv.txt`, is a list of etcdctl command lines that
//! reads as a specification of the KV surface Roster promises: put, get with
//! every range, revision, limit, sort and output flag, del, txn, compaction,
//! endpoint status, member list, and the errors a client can provoke. Each
//! line runs through the real etcdctl 3.4.23 against a fresh etcd 3.4.23 and
//! against a fresh Roster; both start at revision 1, so every revision in the
//! two outputs lines up and must be equal.
//!
//! Output written with `-w json` is parsed and compared field by field after
//! dropping what legitimately differs between two servers (cluster and member
//! ids, raft terms and indexes, URLs, database sizes, the server version; see
//! [`IGNORED`]) and every zero value, because etcd's JSON omits zero, false
//! and empty fields where a different encoder might spell them out. Any other
//! output is compared as text, byte for byte. When etcd fails, the exit code
//! and the final `Error: ...` line are compared; etcdctl's timestamped JSON
//! log lines on stderr are not.
//!
//! The test runs the whole script before it fails, and reports every line
//! where Roster differs, with both outputs: a single divergence early in the
//! script can shift revisions later on, so the first difference listed is
//! the one to look at first. Lines marked `!` must fail on etcd and the others
//! must succeed there; a mismatch means the script, not Roster, is wrong, and
//! stops the test at once.

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Etcd, Roster};
use serde_json::Value;

/// The script; its syntax is described at its top.
const SCRIPT: &str = include_str!("conformance/kv.txt");

/// JSON fields that legitimately differ between two servers, as
/// `(parent, field)`: the parent is the name of the enclosing object's own
/// field (or array of objects), `""` at the top level.
const IGNORED: &[(&str, &str)] = &[
    ("header", "cluster_id"),
    ("header", "member_id"),
    ("header", "raft_term"),
    ("members", "ID"),
    ("members", "peerURLs"),
    ("members", "clientURLs"),
    ("", "Endpoint"),
    ("Status", "leader"),
    ("Status", "raftIndex"),
    ("Status", "raftAppliedIndex"),
    ("Status", "raftTerm"),
    ("Status", "dbSize"),
    ("Status", "dbSizeInUse"),
    ("Status", "version"),
];

#[test]
fn etcdctl_cannot_tell_roster_from_etcd() {
    let steps = parse(SCRIPT).unwrap_or_else(|e| panic!("conformance/kv.txt: {e}"));
    let etcd = Etcd::start();
    let roster = Roster::start();
    let mut reports = Vec::new();
    for step in &steps {
        let want = run(&etcd.endpoint, step);
        let got = run(&roster.endpoint, step);
        if want.success() == step.must_fail {
            panic!(
                "conformance/kv.txt is wrong: etcd {} at line {}, which is {}marked `!`\n{}",
                if want.success() { "succeeds" } else { "fails" },
                step.line,
                if step.must_fail { "" } else { "not " },
                show_step(step, &want, &got, &[]),
            );
        }
        let differences = compare(step, &want, &got);
        if !differences.is_empty() {
            reports.push(show_step(step, &want, &got, &differences));
        }
    }
    assert!(
        reports.is_empty(),
        "Roster differs from etcd on {} of {} commands in conformance/kv.txt:\n\n{}",
        reports.len(),
        steps.len(),
        reports.join("\n"),
    );
}

/// One etcdctl invocation from the script.
#[derive(Debug)]
struct Step {
    /// The 1-based line of the script the command is on.
    line: usize,
    /// The line as written, for messages.
    text: String,
    /// etcdctl's arguments, without the endpoint.
    args: Vec<String>,
    /// What the command reads on stdin (a here-document), if anything.
    stdin: Option<String>,
    /// Whether the command must fail on etcd (the line starts with `!`).
    must_fail: bool,
}

impl Step {
    /// Whether the command asks for JSON output.
    fn json(&self) -> bool {
        self.args
            .windows(2)
            .any(|w| matches!(w[0].as_str(), "-w" | "--write-out") && w[1] == "json")
            || self
                .args
                .iter()
                .any(|a| a == "-w=json" || a == "--write-out=json")
    }
}

/// Splits the script into steps; see its header for the syntax.
fn parse(script: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut lines = script.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((line, text)) = lines.next() {
        let mut args = split_words(text).map_err(|e| format!("line {line}: {e}"))?;
        if args.is_empty() {
            continue;
        }
        let must_fail = args[0] == "!";
        if must_fail {
            args.remove(0);
        }
        let mut stdin = None;
        if let Some(tag) = args.last().and_then(|a| a.strip_prefix("<<")) {
            let tag = tag.to_string();
            args.pop();
            let mut body = String::new();
            loop {
                match lines.next() {
                    Some((_, l)) if l == tag => break,
                    Some((_, l)) => {
                        body.push_str(l);
                        body.push('\n');
                    }
                    None => return Err(format!("line {line}: no closing {tag}")),
                }
            }
            stdin = Some(body);
        }
        if args.is_empty() {
            return Err(format!("line {line}: `!` without a command"));
        }
        steps.push(Step {
            line,
            text: text.trim_end().to_string(),
            args,
            stdin,
            must_fail,
        });
    }
    Ok(steps)
}

/// Splits a line into words the way a shell would, as far as the script
/// needs: single and double quotes (with `\"` and `\\` inside double quotes),
/// and `#` at the start of a word begins a comment.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '#' if word.is_none() => break,
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated '".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("unterminated \"".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated \"".into()),
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// What one etcdctl invocation did.
struct Outcome {
    /// The exit code; `None` when etcdctl was killed by a signal.
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The error etcdctl reports: its final `Error: ...` line, or, lacking
    /// one, stderr without the JSON log lines.
    fn error(&self) -> String {
        let lines = || self.stderr.lines().filter(|l| !l.starts_with('{'));
        match lines().rfind(|l| l.starts_with("Error:")) {
            Some(l) => l.trim_end().to_string(),
            None => lines().collect::<Vec<_>>().join("\n"),
        }
    }
}

/// Path of etcdctl (Debian's `etcd-client` package).
fn etcdctl_binary() -> PathBuf {
    ["/usr/bin/etcdctl", "/usr/local/bin/etcdctl"]
        .iter()
        .map(PathBuf::from)
        .find(|p| Path::new(p).exists())
        .expect(
            "etcdctl is not installed: run ./scripts/test.sh, which installs Debian's etcd-client",
        )
}

/// Runs `step` through etcdctl against the server at `endpoint`.
fn run(endpoint: &str, step: &Step) -> Outcome {
    let mut cmd = Command::new(etcdctl_binary());
    // Settings in the caller's environment (ETCDCTL_ENDPOINTS, ...) would
    // change what etcdctl does, or make it refuse the flags below.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(&step.args)
        .stdin(if step.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run etcdctl: {e}"));
    if let Some(input) = &step.stdin {
        // Dropping the pipe afterwards gives etcdctl its end of input.
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .expect("write etcdctl's stdin");
    }
    let out = child.wait_with_output().expect("wait for etcdctl");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every way Roster's outcome differs from etcd's; empty when they agree.
fn compare(step: &Step, etcd: &Outcome, roster: &Outcome) -> Vec<String> {
    let mut differences = Vec::new();
    if etcd.code != roster.code {
        differences.push(format!(
            "exit code: etcd {:?}, roster {:?}",
            etcd.code, roster.code
        ));
    }
    if !etcd.success() || !roster.success() {
        if etcd.error() != roster.error() {
            differences.push(format!(
                "error: etcd {:?}, roster {:?}",
                etcd.error(),
                roster.error()
            ));
        }
        return differences;
    }
    let etcd_json = if step.json() {
        serde_json::from_str::<Value>(&etcd.stdout).ok()
    } else {
        None
    };
    // Some commands print text even when asked for JSON (compaction does);
    // etcd's output decides how the two are compared.
    match etcd_json {
        Some(want) => match serde_json::from_str::<Value>(&roster.stdout) {
            Ok(got) => diff(
                "",
                &normalise(&want, "").unwrap_or(Value::Null),
                &normalise(&got, "").unwrap_or(Value::Null),
                &mut differences,
            ),
            Err(e) => differences.push(format!("roster's output is not JSON: {e}")),
        },
        None if etcd.stdout != roster.stdout => differences.push("output differs".into()),
        None => {}
    }
    differences
}

/// `value` without the fields in [`IGNORED`] and without zero values (0,
/// false, "", null, and objects and arrays left empty), which etcd's JSON
/// omits; `None` when nothing is left. `parent` names the field `value` is
/// in.
fn normalise(value: &Value, parent: &str) -> Option<Value> {
    match value {
        Value::Null | Value::Bool(false) => None,
        Value::Number(n) if n.as_f64() == Some(0.0) => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .map(|v| normalise(v, parent).unwrap_or(Value::Null))
                .collect(),
        )),
        Value::Object(fields) => {
            let kept: serde_json::Map<_, _> = fields
                .iter()
                .filter(|(k, _)| !IGNORED.contains(&(parent, k.as_str())))
                .filter_map(|(k, v)| Some((k.clone(), normalise(v, k)?)))
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        other => Some(other.clone()),
    }
}

/// Appends to `out` one line per leaf where the normalised outputs differ,
/// naming it by its path (`.kvs[0].value`).
fn diff(path: &str, etcd: &Value, roster: &Value, out: &mut Vec<String>) {
    // An absent object or array is an empty one: descend, so that the
    // message names the leaf that is missing rather than its parent.
    let empty_object = Value::Object(serde_json::Map::new());
    let empty_array = Value::Array(Vec::new());
    let (etcd, roster) = match (etcd, roster) {
        (Value::Null, Value::Object(_)) => (&empty_object, roster),
        (Value::Object(_), Value::Null) => (etcd, &empty_object),
        (Value::Null, Value::Array(_)) => (&empty_array, roster),
        (Value::Array(_), Value::Null) => (etcd, &empty_array),
        _ => (etcd, roster),
    };
    match (etcd, roster) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let x = a.get(k).unwrap_or(&Value::Null);
                let y = b.get(k).unwrap_or(&Value::Null);
                diff(&format!("{path}.{k}"), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                out.push(format!(
                    "{path}: etcd has {} entries, roster {}",
                    a.len(),
                    b.len()
                ));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!(
            "{}: etcd {}, roster {}",
            if path.is_empty() { "." } else { path },
            show_leaf(path, a),
            show_leaf(path, b)
        )),
    }
}

/// A JSON leaf for a message: absent (zero) values said so, and keys and
/// values, which etcdctl writes in base64, also decoded.
fn show_leaf(path: &str, v: &Value) -> String {
    match v {
        Value::Null => "absent (zero)".into(),
        Value::String(s) if path.ends_with(".key") || path.ends_with(".value") => {
            match base64_decode(s) {
                Some(text) => format!("{s:?} ({text:?})"),
                None => format!("{s:?}"),
            }
        }
        v => v.to_string(),
    }
}

/// Decodes standard, padded base64 into text, lossily; `None` if `s` is not
/// base64.
fn base64_decode(s: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut bytes = Vec::new();
    for c in s.trim_end_matches('=').bytes() {
        bits = bits << 6 | ALPHABET.iter().position(|&a| a == c)? as u32;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            bytes.push((bits >> nbits) as u8);
        }
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// A step, its differences and both outcomes, for a failure message.
fn show_step(step: &Step, etcd: &Outcome, roster: &Outcome, differences: &[String]) -> String {
    let mut s = format!("line {}: {}\n", step.line, step.text);
    if let Some(input) = &step.stdin {
        s += &indent(input.trim_end_matches('\n'), "  | ");
    }
    for d in differences {
        s += &format!("  {d}\n");
    }
    for (who, o) in [("etcd", etcd), ("roster", roster)] {
        let code = o.code.map_or("by signal".into(), |c| c.to_string());
        s += &format!("  {who} (exit {code}):\n");
        s += &indent(o.stdout.trim_end(), "    ");
        if !o.success() {
            s += &indent(&o.error(), "    ");
        }
    }
    s
}

/// `text` with each line prefixed by `prefix`.
fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

/// The differences [`compare`] finds between two JSON outputs.
fn json_differences(etcd: &str, roster: &str) -> Vec<String> {
    let parse = |s| normalise(&serde_json::from_str(s).unwrap(), "").unwrap_or(Value::Null);
    let mut out = Vec::new();
    diff("", &parse(etcd), &parse(roster), &mut out);
    out
}

#[test]
fn json_comparison_ignores_only_what_may_differ() {
    let cases: &[(&str, &str, &[&str])] = &[
        // Ids and terms may differ; the revision may not.
        (
            r#"{"header":{"cluster_id":1,"member_id":2,"revision":5,"raft_term":2}}"#,
            r#"{"header":{"cluster_id":3,"member_id":4,"revision":5,"raft_term":9}}"#,
            &[],
        ),
        (
            r#"{"header":{"cluster_id":1,"raft_term":2}}"#,
            r#"{"header":{"cluster_id":3,"revision":5}}"#,
            &[".header.revision: etcd absent (zero), roster 5"],
        ),
        // A missing field is a zero one, and the other way round.
        (
            r#"{"kvs":[{"key":"YQ==","version":1}],"count":1}"#,
            r#"{"kvs":[{"key":"YQ==","version":1,"lease":0,"value":""}],"count":1,"more":false}"#,
            &[],
        ),
        (
            r#"{"kvs":[{"key":"YQ==","value":"Yg=="}]}"#,
            r#"{"kvs":[{"key":"YQ==","value":"Yw=="}],"more":true}"#,
            &[
                r#".kvs[0].value: etcd "Yg==" ("b"), roster "Yw==" ("c")"#,
                ".more: etcd absent (zero), roster true",
            ],
        ),
        (
            r#"{"prev_kvs":[{"key":"YQ=="}]}"#,
            r#"{}"#,
            &[".prev_kvs: etcd has 1 entries, roster 0"],
        ),
        // A status's version is the server's; a key's version is data.
        (
            r#"[{"Endpoint":"a:1","Status":{"version":"3.4.23","dbSize":1,"leader":7}}]"#,
            r#"[{"Endpoint":"b:2","Status":{"version":"3.4.0","dbSize":2,"leader":8}}]"#,
            &[],
        ),
        (
            r#"{"kvs":[{"key":"YQ==","version":2}]}"#,
            r#"{"kvs":[{"key":"YQ==","version":3}]}"#,
            &[".kvs[0].version: etcd 2, roster 3"],
        ),
        // Member ids and URLs may differ; names and the member count may not.
        (
            r#"{"members":[{"ID":1,"name":"default","peerURLs":["http://a"]}]}"#,
            r#"{"members":[{"ID":2,"name":"default","clientURLs":["http://b"]}]}"#,
            &[],
        ),
        (
            r#"{"members":[{"ID":1,"name":"default"}]}"#,
            r#"{"members":[{"ID":1,"name":"roster","isLearner":true}]}"#,
            &[
                ".members[0].isLearner: etcd absent (zero), roster true",
                r#".members[0].name: etcd "default", roster "roster""#,
            ],
        ),
    ];
    for (etcd, roster, want) in cases {
        assert_eq!(json_differences(etcd, roster), *want, "{etcd} vs {roster}");
    }
}

#[test]
fn script_lines_split_like_a_shell() {
    let cases: &[(&str, &[&str])] = &[
        ("put foo bar", &["put", "foo", "bar"]),
        (r#"put a "b c"   # a comment"#, &["put", "a", "b c"]),
        (r#"get "" --from-key"#, &["get", "", "--from-key"]),
        (r#"put 'x"y' "x\"y#z""#, &["put", "x\"y", "x\"y#z"]),
        ("  # only a comment", &[]),
    ];
    for (line, want) in cases {
        assert_eq!(split_words(line).unwrap(), *want, "{line}");
    }
}
