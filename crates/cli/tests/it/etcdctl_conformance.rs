//! etcdctl conformance: one etcdctl script, run against the real etcd and
//! against Roster, must give the same results.
//!
//! Two scripts read as a specification of the surface Roster promises. The
//! first, `conformance/kv.txt`, covers KV: put, get with every range,
//! revision, limit, sort and output flag, del, txn, compaction, endpoint
//! status, member list, and the errors a client can provoke. The second,
//! `conformance/live.txt`, covers what lives on: leases (grant, attach,
//! time-to-live, keep-alive, revoke, expiry), watches (history replay, live
//! events, compacted revisions), locks and elections. Each line runs through
//! the real etcdctl 3.4.23 against a fresh etcd 3.4.23 and, at the same time,
//! against a fresh Roster; both start at revision 1, so every revision in the
//! two outputs lines up and must be equal. Each script has its own pair of
//! servers, and the two scripts run in parallel.
//!
//! Output written with `-w json` is parsed line by line (a watch writes one
//! JSON response per line) and compared field by field after dropping what
//! legitimately differs between two servers (cluster and member ids, raft
//! terms and indexes, URLs, database sizes, the server version; see
//! [`IGNORED`]) and every zero value, because etcd's JSON omits zero, false
//! and empty fields where a different encoder might spell them out. Any other
//! output is compared as text, line by line. The exit codes are compared,
//! and so are the final `Error: ...` lines on stderr; etcdctl's timestamped
//! JSON log lines on stderr are not.
//!
//! Lease ids are the servers' own choice. A lease the script grants is
//! captured in a variable (`$L1 = lease grant 60`), and `$L1` in a later
//! command stands for each server's own id; in the outputs, each server's
//! id for `$L1` (in hex in text, in decimal in JSON) reads `$L1`, so using
//! the right lease is still checked. Any other id a server chose (the
//! session lease of `lock` and `elect`, shown in their keys) reads `<id>`;
//! see [`normalise_text`] and [`substitute`]. A lease's remaining TTL may
//! differ by one second, since the two servers run each command a moment
//! apart; its granted TTL may not. `lease list` and the keys attached to a
//! lease are compared as sets: etcd lists leases by expiry and a lease's
//! keys in Go's random map order.
//!
//! Commands that do not end by themselves (`watch`, `elect -l`, `lock`
//! without a command, `lease keep-alive`) run until their output settles:
//! etcd's until it has been quiet for [`IDLE`] (or silent for
//! [`FIRST_OUTPUT`]), Roster's until it has printed as many lines as etcd's
//! did and then been quiet for [`IDLE`]. Then they are stopped: `lock` and
//! `elect` by SIGINT, which they answer by unlocking or resigning, the others
//! by SIGKILL. Every wait is bounded; see the constants below. Set
//! `ROSTER_CONFORMANCE_TRACE=1` (with `--nocapture`) to see every step's
//! outputs and how long it took, as when writing a script.
//!
//! The test runs the whole script before it fails, and reports every line
//! where Roster differs, with both outputs: a single divergence early in the
//! script can shift revisions later on, so the first difference listed is
//! the one to look at first. Lines marked `!` must fail on etcd and the others
//! must succeed there; a mismatch means the script, not Roster, is wrong, and
//! stops the test at once.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::roster::Roster;
use roster_testkit::{etcdctl_binary, Etcd};
use serde_json::Value;

/// The KV script; its syntax is described at its top.
const KV_SCRIPT: &str = include_str!("conformance/kv.txt");
/// The lease, watch, lock and election script.
const LIVE_SCRIPT: &str = include_str!("conformance/live.txt");

/// The longest a command that ends by itself may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a command that runs on may stay silent before it is taken to
/// have nothing to say.
const FIRST_OUTPUT: Duration = Duration::from_secs(1);
/// How long a command that runs on must stay quiet for its output to count
/// as settled.
const IDLE: Duration = Duration::from_millis(250);
/// The longest the output of a command that runs on is waited for.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// The longest an `await` waits.
const AWAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an interrupted command may take to end before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// JSON fields that legitimately differ between two servers, as
/// `(parent, field)`: the parent is the name of the enclosing object's own
/// field (or array of objects), `""` at the top level (where etcdctl puts
/// the header of lease responses).
const IGNORED: &[(&str, &str)] = &[
    ("header", "cluster_id"),
    ("header", "member_id"),
    ("header", "raft_term"),
    ("Header", "cluster_id"),
    ("Header", "member_id"),
    ("Header", "raft_term"),
    ("", "cluster_id"),
    ("", "member_id"),
    ("", "raft_term"),
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

/// JSON fields that hold a lease id.
const ID_FIELDS: &[&str] = &["ID", "id", "lease"];

/// Ids below this are the script's own (`lease revoke 1234abcd`); ids the
/// servers choose are above it.
const SERVER_ID_MIN: u64 = 1 << 32;

#[test]
fn etcdctl_cannot_tell_roster_from_etcd() {
    conform("conformance/kv.txt", KV_SCRIPT);
}

#[test]
fn etcdctl_cannot_tell_roster_from_etcd_leases_watches_locks_elections() {
    conform("conformance/live.txt", LIVE_SCRIPT);
}

/// Runs `script` against a fresh etcd and a fresh Roster and fails with
/// every difference.
fn conform(name: &str, script: &str) {
    let steps = parse(script).unwrap_or_else(|e| panic!("{name}: {e}"));
    let etcd = Etcd::start();
    let roster = Roster::start();
    let mut sides = [Side::new(etcd.endpoint()), Side::new(&roster.endpoint)];
    // Background commands by name: the line that started them and the
    // command on each side.
    let mut jobs: HashMap<&str, (&Step, [Job; 2])> = HashMap::new();
    let mut reports = Vec::new();
    let wrong = |what: String| script_is_wrong(name, what);
    for step in &steps {
        let began = Instant::now();
        let (shown, outcomes) = match &step.kind {
            // The two servers are independent: each command runs on both
            // at once.
            Kind::Run | Kind::Capture(_) => {
                let started = sides.each_ref().map(|side| side.start(step));
                (step.clone(), started.map(Job::wait))
            }
            Kind::Settle => {
                let started = sides.each_ref().map(|side| side.start(step));
                (step.clone(), settle_and_stop(started))
            }
            Kind::Start(job) => {
                let started = sides.each_ref().map(|side| side.start(step));
                jobs.insert(job, (step, started));
                continue;
            }
            Kind::Await(job, text) => {
                let (_, [e, r]) = jobs.get_mut(job.as_str()).expect("checked by parse");
                if !e.wait_for(text) {
                    wrong(format!(
                        "line {}: etcd's `{job}` did not print {text:?} within {AWAIT_TIMEOUT:?}; \
                         it printed:\n{}",
                        step.line,
                        indent(&e.stdout(), "    "),
                    ));
                }
                if !r.wait_for(text) {
                    reports.push(format!(
                        "line {}: {}\n  roster's `{job}` did not print {text:?} within \
                         {AWAIT_TIMEOUT:?}\n  etcd's printed:\n{}  roster's printed:\n{}",
                        step.line,
                        step.text,
                        indent(&e.stdout(), "    "),
                        indent(&r.stdout(), "    "),
                    ));
                }
                continue;
            }
            Kind::Stop(job) => {
                let (start, started) = jobs.remove(job.as_str()).expect("checked by parse");
                let outcomes = settle_and_stop(started);
                let shown = Step {
                    line: step.line,
                    text: format!("{} (line {}: {})", step.text, start.line, start.text),
                    ..start.clone()
                };
                (shown, outcomes)
            }
        };
        let [want, got] = &outcomes;
        if want.success() == shown.must_fail {
            wrong(format!(
                "etcd {} at line {}, which is {}marked `!`\n{}",
                if want.success() { "succeeds" } else { "fails" },
                shown.line,
                if shown.must_fail { "" } else { "not " },
                show_step(&shown, want, got, &[]),
            ));
        }
        let mut differences = Vec::new();
        if let Kind::Capture(var) = &step.kind {
            for (i, (side, outcome)) in sides.iter_mut().zip(&outcomes).enumerate() {
                match captured_id(&outcome.stdout) {
                    Some(id) => {
                        side.vars.insert(var.clone(), id);
                    }
                    None if i == 0 => wrong(format!(
                        "line {}: no lease id in etcd's output to capture in ${var}\n{}",
                        step.line,
                        show_step(step, want, got, &[]),
                    )),
                    None => differences.push(format!("no lease id to capture in ${var}")),
                }
            }
        }
        differences.extend(compare(&shown, want, got, [&sides[0].vars, &sides[1].vars]));
        if std::env::var_os("ROSTER_CONFORMANCE_TRACE").is_some() {
            let took = began.elapsed();
            eprintln!("{took:.2?} {}", show_step(&shown, want, got, &differences));
        }
        if !differences.is_empty() {
            reports.push(show_step(&shown, want, got, &differences));
        }
    }
    assert!(
        reports.is_empty(),
        "Roster differs from etcd on {} of {} commands in {name}:\n\n{}",
        reports.len(),
        steps.len(),
        reports.join("\n"),
    );
}

/// Stops the test: etcd does not do what the script says it does.
fn script_is_wrong(name: &str, what: String) -> ! {
    panic!("{name} is wrong: {what}")
}

/// One line of the script.
#[derive(Debug, Clone)]
struct Step {
    /// The 1-based line of the script the command is on.
    line: usize,
    /// The line as written, for messages.
    text: String,
    /// What the line does.
    kind: Kind,
    /// etcdctl's arguments, without the endpoint; `$NAME` stands for a
    /// captured lease id. Empty for `await` and `stop`.
    args: Vec<String>,
    /// What the command reads on stdin (a here-document), if anything.
    stdin: Option<String>,
    /// Whether the command must fail on etcd (the line starts with `!`).
    must_fail: bool,
}

/// What a line of the script does.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// Run a command to its end.
    Run,
    /// `$NAME = lease grant ...`: run a command to its end and keep the
    /// lease id it prints as `$NAME`.
    Capture(String),
    /// `~ ...`: run a command that does not end by itself until its output
    /// settles, then interrupt it.
    Settle,
    /// `&NAME ...`: start a command in the background.
    Start(String),
    /// `await NAME TEXT`: wait until the background command prints TEXT
    /// (after whatever the previous `await` on it waited for).
    Await(String, String),
    /// `stop NAME`: let the background command's output settle, interrupt it
    /// and compare everything it printed.
    Stop(String),
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

    /// Whether the order of the output's lines is the server's choice.
    fn unordered(&self) -> bool {
        self.args
            .starts_with(&["lease".to_string(), "list".to_string()])
    }
}

/// Splits the script into steps; see its header for the syntax.
fn parse(script: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut lines = script.lines().enumerate().map(|(i, l)| (i + 1, l));
    // What the script has captured and started so far.
    let mut vars = BTreeSet::new();
    let mut running = BTreeSet::new();
    while let Some((line, text)) = lines.next() {
        let at = |e: String| format!("line {line}: {e}");
        let mut args = split_words(text).map_err(at)?;
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
                    None => return Err(at(format!("no closing {tag}"))),
                }
            }
            stdin = Some(body);
        }
        let first = args.first().cloned().unwrap_or_default();
        let kind = if first == "~" {
            args.remove(0);
            Kind::Settle
        } else if let Some(job) = first.strip_prefix('&').filter(|j| is_name(j)) {
            args.remove(0);
            if !running.insert(job.to_string()) {
                return Err(at(format!("`{job}` is already running")));
            }
            Kind::Start(job.to_string())
        } else if let Some(var) = first.strip_prefix('$').filter(|v| is_name(v)) {
            if args.get(1).map(String::as_str) != Some("=") {
                return Err(at(format!("expected `${var} = COMMAND`")));
            }
            args.drain(..2);
            vars.insert(var.to_string());
            Kind::Capture(var.to_string())
        } else if first == "await" || first == "stop" {
            let job = args.get(1).cloned().unwrap_or_default();
            if !running.contains(&job) {
                return Err(at(format!("`{job}` is not running")));
            }
            let kind = match args.as_slice() {
                [_, _, text] if first == "await" => Kind::Await(job, text.clone()),
                [_, _] if first == "stop" => {
                    running.remove(&job);
                    Kind::Stop(job)
                }
                [..] if first == "await" => return Err(at("expected `await NAME TEXT`".into())),
                [..] => return Err(at("expected `stop NAME`".into())),
            };
            if must_fail || stdin.is_some() {
                return Err(at(format!("`{first}` takes neither `!` nor stdin")));
            }
            args.clear();
            kind
        } else {
            Kind::Run
        };
        if args.is_empty() && !matches!(kind, Kind::Await(..) | Kind::Stop(_)) {
            return Err(at("no command".into()));
        }
        for arg in &args {
            for var in arg.split('$').skip(1) {
                let var: String = var.chars().take_while(|&c| is_name_char(c)).collect();
                if !var.is_empty() && !vars.contains(&var) {
                    return Err(at(format!("${var} is not captured before")));
                }
            }
        }
        steps.push(Step {
            line,
            text: text.trim_end().to_string(),
            kind,
            args,
            stdin,
            must_fail,
        });
    }
    match running.first() {
        Some(job) => Err(format!("`{job}` is never stopped")),
        None => Ok(steps),
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_name_char)
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

/// The lease ids a server chose for the script's variables.
type Vars = HashMap<String, u64>;

/// One server, as the script sees it.
struct Side {
    endpoint: String,
    vars: Vars,
}

impl Side {
    fn new(endpoint: &str) -> Side {
        Side {
            endpoint: endpoint.to_string(),
            vars: Vars::new(),
        }
    }

    /// Starts `step`'s command through etcdctl against this server, with
    /// this server's lease ids for the variables.
    fn start(&self, step: &Step) -> Job {
        let args: Vec<String> = step.args.iter().map(|a| expand(a, &self.vars)).collect();
        Job::start(&self.endpoint, &args, step.stdin.as_deref())
    }
}

/// `arg` with each `$NAME` replaced by the lease id in hex, as etcdctl takes
/// it; an unknown `$NAME` (a capture that failed on Roster) is left as is.
fn expand(arg: &str, vars: &Vars) -> String {
    let mut parts = arg.split('$');
    let mut out = parts.next().unwrap_or_default().to_string();
    for part in parts {
        let end = part.find(|c| !is_name_char(c)).unwrap_or(part.len());
        match vars.get(&part[..end]) {
            Some(id) => out += &format!("{id:x}{}", &part[end..]),
            None => out += &format!("${part}"),
        }
    }
    out
}

/// The lease id in the output of `lease grant`: `lease <hex> granted ...`,
/// or `"ID"` in its JSON.
fn captured_id(stdout: &str) -> Option<u64> {
    stdout.lines().find_map(|line| {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            return v.get("ID").and_then(Value::as_u64);
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("lease"), Some(id)) => u64::from_str_radix(id, 16).ok(),
            _ => None,
        }
    })
}

/// What a command has printed so far on one of its streams.
#[derive(Default)]
struct Stream {
    bytes: Vec<u8>,
    /// When it last printed anything.
    last: Option<Instant>,
    /// Whether the stream is closed.
    closed: bool,
}

/// A running etcdctl; its output is collected in the background, so that it
/// can be looked at while the command runs. Killed when dropped.
struct Job {
    child: Child,
    started: Instant,
    stdout: Arc<Mutex<Stream>>,
    stderr: Arc<Mutex<Stream>>,
    /// Where in stdout the next `await` starts looking.
    cursor: usize,
    /// Whether the test interrupted it.
    interrupted: bool,
    /// Whether it has something to undo when interrupted: `lock` unlocks and
    /// `elect` resigns on SIGINT; other commands are simply killed (a SIGINT
    /// would not do, if the test runs with SIGINT ignored).
    graceful: bool,
}

impl Job {
    fn start(endpoint: &str, args: &[String], stdin: Option<&str>) -> Job {
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
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcdctl: {e}"));
        if let Some(input) = stdin {
            // Dropping the pipe afterwards gives etcdctl its end of input.
            let mut pipe = child.stdin.take().expect("piped stdin");
            pipe.write_all(input.as_bytes())
                .expect("write etcdctl's stdin");
        }
        let stdout = collect(child.stdout.take().expect("piped stdout"));
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        Job {
            child,
            started: Instant::now(),
            stdout,
            stderr,
            cursor: 0,
            interrupted: false,
            graceful: matches!(args.first().map(String::as_str), Some("lock" | "elect")),
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap().bytes).into_owned()
    }

    /// The number of lines printed so far.
    fn lines(&self) -> usize {
        let out = self.stdout.lock().unwrap();
        out.bytes.iter().filter(|&&b| b == b'\n').count()
    }

    /// Waits for the command to end by itself, killing it after
    /// [`COMMAND_TIMEOUT`].
    fn wait(mut self) -> Outcome {
        while self.running() && self.started.elapsed() < COMMAND_TIMEOUT {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut outcome = self.end();
        if outcome.code.is_none() {
            outcome.stderr += &format!("Error: (test) still running after {COMMAND_TIMEOUT:?}\n");
        }
        outcome
    }

    /// Waits until the command's output settles (see the module's
    /// documentation): with `expect`, the number of lines etcd printed, as
    /// Roster's; without, as etcd's.
    fn settle(&mut self, expect: Option<usize>) {
        let start = Instant::now();
        while self.running() && start.elapsed() < SETTLE_LIMIT {
            let last = self.stdout.lock().unwrap().last;
            let silent_long_enough = self.started.elapsed() >= FIRST_OUTPUT;
            // etcd's output must be quiet from now on; Roster's, which ran
            // while etcd's settled, since it last printed.
            let (enough, quiet_since) = match expect {
                None => (
                    last.is_some() || silent_long_enough,
                    last.map_or(start, |l| l.max(start)),
                ),
                Some(0) => (silent_long_enough, last.unwrap_or(self.started)),
                Some(n) => (self.lines() >= n, last.unwrap_or(self.started)),
            };
            if enough && quiet_since.elapsed() >= IDLE {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the command prints `text` after the cursor, and moves the
    /// cursor past it; false if it does not within [`AWAIT_TIMEOUT`].
    fn wait_for(&mut self, text: &str) -> bool {
        let start = Instant::now();
        loop {
            let (found, closed) = {
                let out = self.stdout.lock().unwrap();
                let found = out.bytes[self.cursor..]
                    .windows(text.len())
                    .position(|w| w == text.as_bytes());
                (found, out.closed)
            };
            if let Some(at) = found {
                self.cursor += at + text.len();
                return true;
            }
            if closed || start.elapsed() >= AWAIT_TIMEOUT {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Interrupts the command if it still runs: SIGINT if it has something
    /// to undo, else SIGKILL.
    fn interrupt(&mut self) {
        if self.running() {
            self.interrupted = true;
            if self.graceful {
                let _ = Command::new("kill")
                    .arg("-INT")
                    .arg(self.child.id().to_string())
                    .status();
            } else {
                let _ = self.child.kill();
            }
        }
    }

    /// Ends the command (if interrupted, giving it [`STOP_GRACE`] to end by
    /// itself first) and returns what it did.
    fn end(&mut self) -> Outcome {
        let start = Instant::now();
        while self.interrupted && self.running() && start.elapsed() < STOP_GRACE {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for etcdctl");
        // The pipes close when etcdctl ends, unless a command it ran holds
        // them; don't wait for that for long.
        let start = Instant::now();
        let closed = || self.stdout.lock().unwrap().closed && self.stderr.lock().unwrap().closed;
        while !closed() && start.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let text =
            |s: &Mutex<Stream>| String::from_utf8_lossy(&s.lock().unwrap().bytes).into_owned();
        Outcome {
            code: status.code(),
            stdout: text(&self.stdout),
            stderr: text(&self.stderr),
            stopped: self.interrupted,
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Collects `pipe` into a [`Stream`] in the background.
fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<Stream>> {
    let stream = Arc::new(Mutex::new(Stream::default()));
    let s = stream.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut s = s.lock().unwrap();
                    s.bytes.extend_from_slice(&buf[..n]);
                    s.last = Some(Instant::now());
                }
            }
        }
        s.lock().unwrap().closed = true;
    });
    stream
}

/// Lets the output of a command running on etcd and on Roster settle (see
/// the module's documentation), then interrupts both.
fn settle_and_stop(mut jobs: [Job; 2]) -> [Outcome; 2] {
    jobs[0].settle(None);
    let lines = jobs[0].lines();
    jobs[1].settle(Some(lines));
    for job in &mut jobs {
        job.interrupt();
    }
    jobs.map(|mut job| job.end())
}

/// What one etcdctl invocation did.
struct Outcome {
    /// The exit code; `None` when etcdctl was killed by a signal.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Whether the test stopped it (as it does commands that do not end by
    /// themselves).
    stopped: bool,
}

impl Outcome {
    /// Whether the command succeeded, or ran until the test stopped it.
    fn success(&self) -> bool {
        self.code == Some(0) || self.stopped
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

/// Every way Roster's outcome differs from etcd's; empty when they agree.
/// `vars` are etcd's and Roster's lease ids.
fn compare(step: &Step, etcd: &Outcome, roster: &Outcome, vars: [&Vars; 2]) -> Vec<String> {
    let mut differences = Vec::new();
    if etcd.code != roster.code {
        differences.push(format!(
            "exit code: etcd {:?}, roster {:?}",
            etcd.code, roster.code
        ));
    }
    let [etcd_error, roster_error] =
        [(etcd, vars[0]), (roster, vars[1])].map(|(o, v)| normalise_text(&o.error(), v));
    if etcd_error != roster_error {
        differences.push(format!(
            "error: etcd {etcd_error:?}, roster {roster_error:?}"
        ));
    }
    let want = output_lines(step, &etcd.stdout, vars[0]);
    let got = output_lines(step, &roster.stdout, vars[1]);
    if want.len() != got.len() {
        differences.push(format!(
            "output: etcd printed {} lines, roster {}",
            want.len(),
            got.len()
        ));
    }
    for (i, (a, b)) in want.iter().zip(&got).enumerate() {
        // A single line needs no number.
        let at = if want.len() == 1 {
            String::new()
        } else {
            format!("line {}: ", i + 1)
        };
        match (a, b) {
            (Line::Json(a), Line::Json(b)) => {
                let mut found = Vec::new();
                diff("", a, b, &mut found);
                differences.extend(found.into_iter().map(|d| format!("{at}{d}")));
            }
            (Line::Text(a), Line::Text(b)) if text_eq(a, b) => {}
            (Line::Text(a), Line::Text(b)) => {
                differences.push(format!("{at}output: etcd {a:?}, roster {b:?}"))
            }
            (Line::Json(_), Line::Text(_)) => {
                differences.push(format!("{at}roster's output is not JSON"))
            }
            (Line::Text(_), Line::Json(_)) => {
                differences.push(format!("{at}roster's output is JSON, etcd's is not"))
            }
        }
    }
    differences
}

/// One line of output, ready to compare.
#[derive(Debug)]
enum Line {
    /// Normalised with [`normalise_text`].
    Text(String),
    /// Normalised with [`substitute`] and [`normalise`].
    Json(Value),
}

/// `stdout` as lines to compare, with ids normalised; JSON lines (if `step`
/// asked for JSON) parsed; and lists whose order is the server's choice
/// sorted: the leases of `lease list`, and a lease's keys, which etcd lists
/// in Go's random map order.
fn output_lines(step: &Step, stdout: &str, vars: &Vars) -> Vec<Line> {
    let mut lines: Vec<Line> = stdout
        .lines()
        .map(|l| {
            let json = (step.json() && l.starts_with(['{', '[']))
                .then(|| serde_json::from_str::<Value>(l).ok())
                .flatten();
            match json {
                Some(v) => {
                    Line::Json(normalise(&substitute(&v, "", vars), "").unwrap_or(Value::Null))
                }
                None => Line::Text(normalise_text(l, vars)),
            }
        })
        .collect();
    if step.unordered() {
        // `found N leases` stays first.
        let skip = usize::from(matches!(lines.first(), Some(Line::Text(_))));
        lines[skip..].sort_by_key(|l| format!("{l:?}"));
    }
    for line in &mut lines {
        match line {
            Line::Text(text) => {
                // `attached keys([k1 k2])`
                const MARK: &str = "attached keys([";
                if let (Some(start), true) = (text.find(MARK), text.ends_with("])")) {
                    let start = start + MARK.len();
                    let mut keys: Vec<&str> = text[start..text.len() - 2].split(' ').collect();
                    keys.sort_unstable();
                    *text = format!("{}{}])", &text[..start], keys.join(" "));
                }
            }
            Line::Json(Value::Object(fields)) => {
                for set in ["leases", "keys"] {
                    if let Some(Value::Array(items)) = fields.get_mut(set) {
                        items.sort_by_key(|v| v.to_string());
                    }
                }
            }
            Line::Json(_) => {}
        }
    }
    lines
}

/// `text` with every lease id in hex (a word of 9 to 16 hex digits whose
/// value is at least [`SERVER_ID_MIN`]) written as the variable it is the id
/// of (`$L1`), or as `<id>` if it is none.
fn normalise_text(text: &str, vars: &Vars) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphanumeric()) {
        out += &rest[..start];
        rest = &rest[start..];
        let end = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        let word = &rest[..end];
        let id = (9..=16)
            .contains(&word.len())
            .then(|| word.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .filter(|&hex| hex)
            .and_then(|_| u64::from_str_radix(word, 16).ok())
            .filter(|&id| id >= SERVER_ID_MIN);
        match id {
            Some(id) => out += &id_name(id, vars),
            None => out += word,
        }
        rest = &rest[end..];
    }
    out + rest
}

/// `$NAME` for a variable's lease id, `<id>` for any other.
fn id_name(id: u64, vars: &Vars) -> String {
    match vars.iter().find(|(_, &v)| v == id) {
        Some((name, _)) => format!("${name}"),
        None => "<id>".into(),
    }
}

/// `value` with lease ids named as [`normalise_text`] names them: any number
/// that is a variable's id, and any other large number in an id field
/// ([`ID_FIELDS`]). Keys and values (base64) that hold an id in hex, such as
/// a lock's key `mylock/<lease>`, are decoded and normalised too. `field` is
/// the name of the field `value` is in.
fn substitute(value: &Value, field: &str, vars: &Vars) -> Value {
    match value {
        Value::Number(n) => match n.as_u64() {
            Some(id) if vars.values().any(|&v| v == id) => Value::String(id_name(id, vars)),
            Some(id) if id >= SERVER_ID_MIN && ID_FIELDS.contains(&field) => {
                Value::String(id_name(id, vars))
            }
            _ => value.clone(),
        },
        Value::String(s) if matches!(field, "key" | "value" | "keys") => match base64_decode(s) {
            Some(text) if normalise_text(&text, vars) != text => {
                Value::String(format!("{} (decoded)", normalise_text(&text, vars)))
            }
            _ => value.clone(),
        },
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| substitute(v, field, vars)).collect())
        }
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), substitute(v, k, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether two lines of text are the same, but for a lease's remaining TTL
/// (`remaining(29s)`), which may differ by a second.
fn text_eq(a: &str, b: &str) -> bool {
    const MARK: &str = "remaining(";
    match (a.find(MARK), b.find(MARK)) {
        (Some(i), Some(j)) if a[..i] == b[..j] => {
            let (a, b) = (&a[i + MARK.len()..], &b[j + MARK.len()..]);
            let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (m, n) = (digits(a), digits(b));
            match (a[..m].parse::<i64>(), b[..n].parse::<i64>()) {
                (Ok(x), Ok(y)) if ttl_close(x, y) => text_eq(&a[m..], &b[n..]),
                _ => a == b,
            }
        }
        _ => a == b,
    }
}

/// Whether two remaining TTLs are the same but for the moment they were
/// read at; -1 (expired) is no TTL.
fn ttl_close(x: i64, y: i64) -> bool {
    x == y || (x >= 0 && y >= 0 && (x - y).abs() <= 1)
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
/// naming it by its path (`.kvs[0].value`). A lease's remaining TTL
/// (`.ttl`) may differ by a second.
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
        (Value::Number(a), Value::Number(b))
            if path.ends_with(".ttl")
                && matches!((a.as_i64(), b.as_i64()), (Some(x), Some(y)) if ttl_close(x, y)) => {}
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
        let stopped = if o.stopped {
            ", stopped by the test"
        } else {
            ""
        };
        s += &format!("  {who} (exit {code}{stopped}):\n");
        s += &indent(o.stdout.trim_end(), "    ");
        if !o.error().is_empty() {
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
    json_differences_with(etcd, roster, [&Vars::new(), &Vars::new()])
}

/// The same with etcd's and Roster's lease ids for the variables.
fn json_differences_with(etcd: &str, roster: &str, vars: [&Vars; 2]) -> Vec<String> {
    let outcome = |stdout: &str| Outcome {
        code: Some(0),
        stdout: format!("{stdout}\n"),
        stderr: String::new(),
        stopped: false,
    };
    let step = &parse("get x -w json").unwrap()[0];
    compare(step, &outcome(etcd), &outcome(roster), vars)
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

#[test]
fn lease_ids_and_remaining_ttls_compare_as_they_may_differ() {
    let etcd: Vars = [("L1".to_string(), 0x2040a1fffd3c7c05)].into();
    let roster: Vars = [("L1".to_string(), 0x68d79ff6f0783e8d)].into();
    // In text, a variable's id reads as the variable, any other server id
    // as <id>, and small ids (the script's own) as themselves.
    assert_eq!(
        normalise_text("lease 2040a1fffd3c7c05 granted with TTL(60s)", &etcd),
        "lease $L1 granted with TTL(60s)"
    );
    assert_eq!(
        normalise_text("mylock/694d7b5a3c2e1f08", &etcd),
        "mylock/<id>"
    );
    assert_eq!(
        normalise_text("lease 0000000000001234 already expired", &etcd),
        "lease 0000000000001234 already expired"
    );
    assert_eq!(
        normalise_text("PUT\nfoo/bar\n12345", &etcd),
        "PUT\nfoo/bar\n12345"
    );
    // The remaining TTL may differ by a second, no more; the granted one not.
    assert!(text_eq(
        "lease $L1 granted with TTL(60s), remaining(59s)",
        "lease $L1 granted with TTL(60s), remaining(58s)"
    ));
    assert!(!text_eq(
        "lease $L1 granted with TTL(60s), remaining(59s)",
        "lease $L1 granted with TTL(60s), remaining(57s)"
    ));
    assert!(!text_eq(
        "lease $L1 granted with TTL(60s), remaining(59s)",
        "lease $L1 granted with TTL(61s), remaining(59s)"
    ));
    assert!(!text_eq("remaining(1s)", "remaining(-1s)"));
    let vars = [&etcd, &roster];
    let cases: &[(&str, &str, &[&str])] = &[
        // Each server's own id for $L1, in the header of a lease response.
        (
            r#"{"cluster_id":1,"revision":3,"ID":2324035528560507909,"TTL":60}"#,
            r#"{"cluster_id":2,"revision":3,"ID":7554682782882479757,"TTL":60}"#,
            &[],
        ),
        (
            r#"{"id":2324035528560507909,"ttl":29,"granted-ttl":30}"#,
            r#"{"id":7554682782882479757,"ttl":30,"granted-ttl":30}"#,
            &[],
        ),
        (
            r#"{"id":2324035528560507909,"ttl":29,"granted-ttl":30}"#,
            r#"{"id":7554682782882479757,"ttl":27,"granted-ttl":31}"#,
            &[
                ".granted-ttl: etcd 30, roster 31",
                ".ttl: etcd 29, roster 27",
            ],
        ),
        // A key on the wrong lease.
        (
            r#"{"kvs":[{"key":"YQ==","lease":2324035528560507909}]}"#,
            r#"{"kvs":[{"key":"YQ==","lease":1234567890123}]}"#,
            &[r#".kvs[0].lease: etcd "$L1", roster "<id>""#],
        ),
        // A lock's key, named after its session lease.
        (
            r#"{"Header":{"revision":5,"raft_term":2},"kvs":[{"key":"bGsvMjA0MGExZmZmZDNjN2M2ZA==","lease":2324035528560508013}]}"#,
            r#"{"Header":{"revision":5},"kvs":[{"key":"bGsvNDA4NTI3NGM1MTcxNTkzYQ==","lease":4649165399067285818}]}"#,
            &[],
        ),
    ];
    for (e, r, want) in cases {
        assert_eq!(json_differences_with(e, r, vars), *want, "{e} vs {r}");
    }
}

#[test]
fn script_lines_parse_into_steps() {
    let script = "\
$L1 = lease grant 60
put k v --lease=$L1   # a comment
! lease revoke $L1
~ watch k --rev=1
&W watch --prefix p/
await W p/ready
stop W
";
    let steps = parse(script).unwrap();
    let kinds: Vec<_> = steps
        .iter()
        .map(|s| (s.kind.clone(), s.must_fail, s.args.join(" ")))
        .collect();
    assert_eq!(
        kinds,
        [
            (Kind::Capture("L1".into()), false, "lease grant 60".into()),
            (Kind::Run, false, "put k v --lease=$L1".into()),
            (Kind::Run, true, "lease revoke $L1".into()),
            (Kind::Settle, false, "watch k --rev=1".into()),
            (Kind::Start("W".into()), false, "watch --prefix p/".into()),
            (
                Kind::Await("W".into(), "p/ready".into()),
                false,
                String::new()
            ),
            (Kind::Stop("W".into()), false, String::new()),
        ]
    );
    let vars: Vars = [("L1".to_string(), 0xabc)].into();
    assert_eq!(expand("--lease=$L1", &vars), "--lease=abc");
    assert_eq!(expand("$L1", &vars), "abc");
    for bad in [
        "put k v --lease=$L2",
        "&W watch k",
        "stop W",
        "&W watch k\n&W watch k\nstop W",
        "! await W x",
        "$L1 lease grant 1",
    ] {
        assert!(parse(bad).is_err(), "{bad:?} parses");
    }
}
