//! The ACME chaos run of issue 10, against real peers: Pebble rejecting 40 % of good nonces
//! (badNonce), sleeping 0–15 s before each validation and never reusing an authorization;
//! DNS-01 through `_acme-challenge` CNAMEs delegated into a validation zone at Knot, which
//! certkeeper updates over RFC 2136 with TSIG; unbound as the CA's resolver, following the
//! CNAMEs across zones. Twenty certificates are requested through the CLI (13 with one name, 6
//! with two, a wildcard with its base) and the daemon is SIGKILLed three times while orders are
//! in flight, then left to finish. Each kill comes a random 3–15 s after the daemon's (re)start,
//! once an order of that run is open at the CA; the second waits (up to a minute) for the
//! finalize window instead: an order the CA was asked to finalize whose certificate certkeeper
//! does not hold yet.
//!
//! What is asserted, and where each number comes from:
//! - every name set was issued exactly once by the CA: Pebble logs each issuance ("Issued
//!   certificate serial S for order O"); each serial is fetched back through Pebble's management
//!   API (`/cert-status-by-serial/S`) and counted under the names of the certificate it returns.
//!   The serial certkeeper holds for each certificate must be that one.
//! - at most one extra order per certificate, in total (2 × 20) and for each: Pebble logs each
//!   order it creates ("Added order"); the daemon's log names the certificate of each order
//!   (the CA's log does not name an order's identifiers), and no CA order may go unnamed,
//!   except one the CA created in the last [`KILL_GRACE`] before a kill and never went on with:
//!   the killed run died between the CA's answer and its log line (nothing can close that
//!   window; such an order stays pending at the CA until it expires).
//! - nothing left in the validation zone: a zone transfer straight from Knot holds no TXT.
//! - no panic in the daemon's log, across all its runs.
//!
//! The seed of the kill moments is printed; `CHAOS_SEED=<n>` replays them (Pebble's own
//! randomness, badNonce and sleeps, is not seeded). `CHAOS_KEEP_LOGS=<dir>` keeps the
//! daemon's and Pebble's logs there.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Daemon;
use common::peers::{Knot, Pebble, PebbleOptions, Record, Unbound};

const CUSTOMER_ZONE: &str = "customer.test.";
const VALIDATION_ZONE: &str = "acme.test.";
const KILLS: usize = 3;
/// How long the twenty may take after the last restart before the run is called stuck.
const ISSUE_DEADLINE: Duration = Duration::from_secs(600);
/// Withdrawals run in the background once an order is over, so they may trail issuance.
const CLEAN_DEADLINE: Duration = Duration::from_secs(60);

/// A requested set of names, lower case, as the CA's certificate lists them.
type NameSet = BTreeSet<String>;

#[test]
fn twenty_certificates_through_a_hostile_ca_and_three_kills_are_each_issued_once() {
    let seed = seed();
    eprintln!("chaos seed {seed} (replay the kill moments with CHAOS_SEED={seed})");
    let mut rng = SplitMix64(seed);
    let started = Instant::now();

    let knot = Knot::start(&[CUSTOMER_ZONE, VALIDATION_ZONE]);
    let unbound = Unbound::start(&[(CUSTOMER_ZONE, knot.addr), (VALIDATION_ZONE, knot.addr)]);
    let pebble = Pebble::start(PebbleOptions {
        nonce_reject_percent: 40,
        va_sleep: true,
        authz_reuse_percent: 0,
        ..PebbleOptions::new(unbound.addr)
    });
    let mut daemon = Daemon::start_with(Some(&config(&pebble, &knot, &unbound)));
    let _keep = KeepLogs::new(vec![daemon.log.clone(), pebble.log.clone()]);

    let sets = name_sets();
    delegate_all(&knot, &sets);
    let requested: BTreeMap<String, NameSet> = sets
        .iter()
        .map(|names| (request(&daemon, names), names.iter().cloned().collect()))
        .collect();

    let mut failures = Vec::new();
    let kills = kill_while_in_flight(&mut daemon, &pebble, &mut rng, &mut failures);
    let unissued = wait_all_issued(&daemon, &requested);
    if !unissued.is_empty() {
        failures.push(format!(
            "{} of {} certificates not issued {ISSUE_DEADLINE:?} after the last restart: {}",
            unissued.len(),
            requested.len(),
            unissued.join("; ")
        ));
    }
    let leftovers = wait_zone_clean(&knot);
    if !leftovers.is_empty() {
        failures.push(format!(
            "{} TXT records left in {VALIDATION_ZONE} {CLEAN_DEADLINE:?} after the run: {}",
            leftovers.len(),
            leftovers.join("; ")
        ));
    }

    let ca = CaLog::read(&pebble);
    let held = serials_held(&daemon);
    let issued = issued_by_name_set(&pebble, &ca);
    check_issuance(&requested, &held, &issued, &mut failures);
    let order_limit = 2 * requested.len();
    if ca.orders.len() > order_limit {
        failures.push(format!(
            "the CA created {} orders for {} certificates (at most {order_limit} allowed)",
            ca.orders.len(),
            requested.len()
        ));
    }
    let log = daemon.log_text();
    // Per certificate, from the daemon's log (Pebble's does not say whose an order is): at most
    // one order more than the one it needs. Every CA order must have an owner there.
    let owners = order_owners(&log);
    for id in requested.keys() {
        let count = ca
            .orders
            .iter()
            .filter(|order| owners.get(order.as_str()) == Some(id))
            .count();
        if count > 2 {
            failures.push(format!(
                "{id}: {count} orders at the CA (at most 2 allowed)"
            ));
        }
    }
    let unowned = ca
        .orders
        .iter()
        .enumerate()
        .filter(|(at, order)| !owners.contains_key(order.as_str()) && !cut_off(&kills, &ca, *at))
        .count();
    if unowned > 0 {
        failures.push(format!(
            "{unowned} orders at the CA that the daemon's log never names (orphans), not \
             created in the {KILL_GRACE:?} before a kill or gone on with afterwards"
        ));
    }
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
    if !panics.is_empty() {
        failures.push(format!("the daemon panicked:\n{}", panics.join("\n")));
    }

    let summary = summary(&Findings {
        seed,
        elapsed: started.elapsed(),
        kills: &kills,
        ca: &ca,
        requested: &requested,
        held: &held,
        issued: &issued,
        owners: &owners,
    });
    eprintln!("{summary}");
    assert!(
        failures.is_empty(),
        "chaos run failed (seed {seed}):\n- {}\n\n{summary}\n{}",
        failures.join("\n- "),
        evidence(&log, &pebble)
    );
}

/// The twenty name sets: 13 with one name, 6 with two, and a wildcard with its base.
fn name_sets() -> Vec<Vec<String>> {
    let mut sets: Vec<Vec<String>> = (1..=13)
        .map(|i| vec![format!("single{i:02}.customer.test")])
        .collect();
    sets.extend((1..=6).map(|i| {
        vec![
            format!("pair{i}.customer.test"),
            format!("www.pair{i}.customer.test"),
        ]
    }));
    sets.push(vec![
        "*.x.customer.test".to_owned(),
        "x.customer.test".to_owned(),
    ]);
    sets
}

/// The daemon's config: Pebble as the issuer, DNS-01 published at Knot over RFC 2136 and the
/// CNAMEs checked through unbound (the resolver the CA uses too).
fn config(pebble: &Pebble, knot: &Knot, unbound: &Unbound) -> String {
    format!(
        "[[acme]]\nname = \"pebble\"\ndirectory = {:?}\ncontact = [\"mailto:ops@customer.test\"]\n\
         trusted-roots = {:?}\n\n\
         [validation.dns]\nzone = \"acme.test\"\nnameservers = [\"{}\"]\nttl = 5\n\
         publisher = \"rfc2136\"\nserver = \"{}\"\nkey-name = \"{}\"\nkey-file = {:?}\n",
        pebble.directory_url,
        pebble.tls_root_pem.display().to_string(),
        unbound.addr,
        knot.addr,
        knot.tsig_name,
        knot.tsig_key_file.display().to_string(),
    )
}

/// `_acme-challenge.<base>. CNAME <label>.acme.test.` for a name (a wildcard shares its base's).
fn delegation(name: &str) -> (String, String) {
    let base = name.strip_prefix("*.").unwrap_or(name);
    (
        format!("_acme-challenge.{base}."),
        format!("{}.{VALIDATION_ZONE}", certkeeper::validation::label(base)),
    )
}

/// The customer has delegated every name before anything is requested: the CNAMEs are in the
/// customer zone at Knot.
fn delegate_all(knot: &Knot, sets: &[Vec<String>]) {
    let records: BTreeSet<(String, String)> =
        sets.iter().flatten().map(|name| delegation(name)).collect();
    let updates: Vec<String> = records
        .iter()
        .map(|(name, target)| format!("update add {name} 60 CNAME {target}"))
        .collect();
    let updates: Vec<&str> = updates.iter().map(String::as_str).collect();
    knot.nsupdate(CUSTOMER_ZONE, &updates);
}

/// `certkeeper request NAMES --issuer pebble --validation dns`; returns the certificate's id.
/// The records it asks for must be the CNAMEs already in place.
fn request(daemon: &Daemon, names: &[String]) -> String {
    let mut args = vec!["request"];
    args.extend(names.iter().map(String::as_str));
    args.extend(["--issuer", "pebble", "--validation", "dns"]);
    let cert = daemon.json(&args);
    let asked: BTreeSet<(String, String)> = cert["validation_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["Type"], "CNAME", "{cert:#}");
            (
                r["Name"].as_str().unwrap().to_owned(),
                r["Value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let created: BTreeSet<(String, String)> = names.iter().map(|n| delegation(n)).collect();
    assert_eq!(
        asked, created,
        "the request asks for other records: {cert:#}"
    );
    common::id(&cert)
}

/// What a kill waits for once its random delay is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    /// An order this run of the daemon created is open at the CA (neither issued nor invalid):
    /// challenges published or answered, validation under way.
    OrderOpen,
    /// The CA was asked during this run to finalize an order whose certificate certkeeper does
    /// not hold yet: where a lost answer makes a client order the same names again.
    Finalizing,
}

/// The kills of a run: one aimed at the finalize window between two at any open order.
const MOMENTS: [Moment; KILLS] = [Moment::OrderOpen, Moment::Finalizing, Moment::OrderOpen];
/// How long before a kill an order may have been created for the killed run not to have
/// logged it (it logs an order as soon as the CA answers, before storing it).
const KILL_GRACE: Duration = Duration::from_secs(1);
/// How long a kill waits for its moment before it settles for an open order.
const MOMENT_WAIT: Duration = Duration::from_secs(60);

/// One SIGKILL of the daemon, as the summary reports it.
struct Kill {
    /// Since the certificates were requested.
    at: Duration,
    /// The moment it was aimed at and the one it hit.
    aimed: Moment,
    hit: Moment,
    /// Orders matching `hit` at the CA when it was killed.
    orders: usize,
    /// Certificates the daemon called issued just before.
    issued: usize,
    /// The CA's orders (indexes into [`CaLog::orders`]) created from [`KILL_GRACE`] before the
    /// kill until the daemon was dead: the only ones the daemon may not have logged.
    unlogged_window: std::ops::Range<usize>,
}

/// How many orders the CA had created at moments of a run: to tell, after a kill, which
/// orders were created just before it.
#[derive(Default)]
struct OrderCounts(Vec<(Instant, usize)>);

impl OrderCounts {
    /// Reads the CA's log and records how many orders it has created by now.
    fn record(&mut self, pebble: &Pebble) -> CaLog {
        let ca = CaLog::read(pebble);
        self.0.push((Instant::now(), ca.orders.len()));
        ca
    }

    /// The count recorded last at or before `moment` (0 when none was).
    fn at(&self, moment: Instant) -> usize {
        self.0
            .iter()
            .rev()
            .find(|(at, _)| *at <= moment)
            .map_or(0, |(_, count)| *count)
    }
}

/// Kills the daemon [`KILLS`] times at the [`MOMENTS`], each a random 1–6 s after its
/// (re)start, restarting it after each. A kill that cannot happen while an order is in flight
/// (everything issued already) is a failure: the run would not test what it claims to.
fn kill_while_in_flight(
    daemon: &mut Daemon,
    pebble: &Pebble,
    rng: &mut SplitMix64,
    failures: &mut Vec<String>,
) -> Vec<Kill> {
    let requested_at = Instant::now();
    let mut kills = Vec::new();
    let mut counts = OrderCounts::default();
    for (round, aimed) in (1..=KILLS).zip(MOMENTS) {
        // Soon after each start: the twenty take well under a minute when the daemon copes,
        // and each kill must find orders in flight. Orders the killed runs made count: the
        // new run takes them up again instead of ordering anew.
        let delay = Duration::from_millis(rng.between(1_000, 6_000));
        let slept = Instant::now();
        while slept.elapsed() < delay {
            counts.record(pebble);
            std::thread::sleep(
                Duration::from_millis(100).min(delay.saturating_sub(slept.elapsed())),
            );
        }
        let Some((hit, orders)) = wait_for_moment(daemon, pebble, aimed, &mut counts) else {
            failures.push(format!(
                "kill {round} of {KILLS} could not happen while an order was in flight: the \
                 daemon had no open order at the CA ({} of 20 issued)",
                issued_count(daemon)
            ));
            break;
        };
        let issued = issued_count(daemon);
        let killed_at = Instant::now();
        daemon.kill();
        // A request that reached Pebble before the kill may be logged a moment after it.
        std::thread::sleep(Duration::from_millis(500));
        let after = counts.record(pebble).orders.len();
        let kill = Kill {
            at: requested_at.elapsed(),
            aimed,
            hit,
            orders,
            issued,
            unlogged_window: counts.at(killed_at - KILL_GRACE)..after,
        };
        eprintln!("kill {round}: {}", kill.describe());
        kills.push(kill);
        daemon.spawn();
    }
    kills
}

/// Waits for `aimed` (at most [`MOMENT_WAIT`] for [`Moment::Finalizing`], then settles for an
/// open order); returns the moment hit and how many orders are in it, or `None`
/// when no order opens within two minutes or everything is issued.
fn wait_for_moment(
    daemon: &Daemon,
    pebble: &Pebble,
    aimed: Moment,
    counts: &mut OrderCounts,
) -> Option<(Moment, usize)> {
    let started = Instant::now();
    loop {
        let ca = counts.record(pebble);
        if aimed == Moment::Finalizing {
            let finalizing = ca.finalizing_not_held(&held_serials(daemon, &ca));
            if finalizing > 0 {
                return Some((Moment::Finalizing, finalizing));
            }
        }
        let open = ca.open_orders();
        if open > 0 && (aimed == Moment::OrderOpen || started.elapsed() > MOMENT_WAIT) {
            return Some((Moment::OrderOpen, open));
        }
        if started.elapsed() > Duration::from_secs(120) || all_issued(daemon) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The serials certkeeper holds, asked only when the CA has finalized something (each ask is
/// a CLI call).
fn held_serials(daemon: &Daemon, ca: &CaLog) -> BTreeSet<String> {
    if ca.finalizing.is_empty() {
        return BTreeSet::new();
    }
    inventory(daemon)
        .into_values()
        .filter_map(|(_, serial)| serial)
        .collect()
}

impl Kill {
    fn describe(&self) -> String {
        let what = match self.hit {
            Moment::OrderOpen => "open at the CA",
            Moment::Finalizing => "finalized at the CA and not yet held by certkeeper",
        };
        let missed = if self.aimed == self.hit {
            ""
        } else {
            " (no finalize window came up in time)"
        };
        format!(
            "at {:.1?} after the requests, {} orders {what}{missed}, {} of 20 issued",
            self.at, self.orders, self.issued
        )
    }
}

/// The certificates as `list` shows them: id → (status, serial).
fn inventory(daemon: &Daemon) -> BTreeMap<String, (String, Option<String>)> {
    let list = daemon.json(&["list", "--all", "--limit", "1000"]);
    list["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                common::id(c),
                (
                    c["status"].as_str().unwrap_or_default().to_owned(),
                    c["serial"].as_str().map(normalize_serial),
                ),
            )
        })
        .collect()
}

fn issued_count(daemon: &Daemon) -> usize {
    inventory(daemon)
        .values()
        .filter(|(status, _)| status == "issued")
        .count()
}

fn all_issued(daemon: &Daemon) -> bool {
    inventory(daemon)
        .values()
        .all(|(status, _)| status == "issued")
}

/// Waits up to [`ISSUE_DEADLINE`] for every certificate to be issued; returns the ones that
/// were not, with their status and last renewal reason.
fn wait_all_issued(daemon: &Daemon, requested: &BTreeMap<String, NameSet>) -> Vec<String> {
    let deadline = Instant::now() + ISSUE_DEADLINE;
    while Instant::now() < deadline && !all_issued(daemon) {
        std::thread::sleep(Duration::from_secs(1));
    }
    inventory(daemon)
        .into_iter()
        .filter(|(_, (status, _))| status != "issued")
        .map(|(id, (status, _))| {
            let c = daemon.json(&["describe", &id]);
            format!(
                "{id} {:?} is {status} (renewal: {})",
                requested.get(&id).cloned().unwrap_or_default(),
                c["renewal"]
            )
        })
        .collect()
}

/// Waits up to [`CLEAN_DEADLINE`] for the validation zone at Knot to hold no TXT record;
/// returns the ones still there (`name "value"`).
fn wait_zone_clean(knot: &Knot) -> Vec<String> {
    let deadline = Instant::now() + CLEAN_DEADLINE;
    loop {
        let txt: Vec<String> = knot
            .axfr(VALIDATION_ZONE)
            .iter()
            .filter(|r| r.rtype == "TXT")
            .map(|r: &Record| format!("{} {}", r.name, r.rdata))
            .collect();
        if txt.is_empty() || Instant::now() > deadline {
            return txt;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What Pebble's log says it did (Debian's pebble 2.4 writes one line per event).
struct CaLog {
    /// The lines read: where a later read can start.
    lines: usize,
    /// Order ids in creation order (`Added order "ID" to the db`).
    orders: Vec<String>,
    /// `(serial, order)` of each issued certificate (`Issued certificate serial S for order O`).
    issued: Vec<(String, String)>,
    /// Orders the CA set invalid (`order O set INVALID by invalid authz A`).
    invalid: BTreeSet<String>,
    /// Orders the CA began to finalize (`Order O is fully authorized. Processing finalization`).
    finalizing: Vec<String>,
    /// The last `There are now N orders in the db`.
    orders_in_db: Option<usize>,
}

impl CaLog {
    /// Everything Pebble logged.
    fn read(pebble: &Pebble) -> Self {
        Self::since(pebble, 0)
    }

    /// What Pebble logged from line `first` (0-based) on.
    fn since(pebble: &Pebble, first: usize) -> Self {
        let text = std::fs::read_to_string(&pebble.log).unwrap_or_default();
        let mut log = Self {
            lines: 0,
            orders: Vec::new(),
            issued: Vec::new(),
            invalid: BTreeSet::new(),
            finalizing: Vec::new(),
            orders_in_db: None,
        };
        // Only whole lines: Pebble may be writing the last one.
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        log.lines = complete.lines().count();
        let id = |rest: &str| {
            let word = rest.split_whitespace().next().unwrap_or_default();
            word.trim_matches('"').to_owned()
        };
        for line in complete.lines().skip(first) {
            if let Some(rest) = after(line, "Added order ") {
                log.orders.push(id(rest));
            } else if let Some(rest) = after(line, "Issued certificate serial ") {
                let mut words = rest.split_whitespace();
                let serial = words.next().unwrap_or_default();
                let order = words.nth(2).unwrap_or_default();
                log.issued.push((normalize_serial(serial), id(order)));
            } else if let Some(rest) = after(line, "There are now ") {
                log.orders_in_db = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            } else if line.contains("set INVALID by invalid authz")
                && let Some(rest) = after(line, "order ")
            {
                log.invalid.insert(id(rest));
            } else if line.contains("is fully authorized. Processing finalization")
                && let Some(rest) = after(line, "Order ")
            {
                log.finalizing.push(id(rest));
            }
        }
        log
    }

    /// Orders that are neither issued nor invalid.
    fn open_orders(&self) -> usize {
        let done: BTreeSet<&str> = self
            .issued
            .iter()
            .map(|(_, order)| order.as_str())
            .chain(self.invalid.iter().map(String::as_str))
            .collect();
        self.orders
            .iter()
            .filter(|id| !done.contains(id.as_str()))
            .count()
    }

    /// Orders being finalized, or finalized with a serial not in `held`.
    fn finalizing_not_held(&self, held: &BTreeSet<String>) -> usize {
        self.finalizing
            .iter()
            .filter(|order| {
                self.issued
                    .iter()
                    .find(|(_, issued)| issued == *order)
                    .is_none_or(|(serial, _)| !held.contains(serial))
            })
            .count()
    }
}

/// Whether the CA's order number `at` is one a kill cut off before the daemon could log it:
/// created in the kill's [`Kill::unlogged_window`] and left open (nobody went on with it).
fn cut_off(kills: &[Kill], ca: &CaLog, at: usize) -> bool {
    let order = &ca.orders[at];
    let open = !ca.invalid.contains(order) && !ca.issued.iter().any(|(_, o)| o == order);
    open && kills.iter().any(|kill| kill.unlogged_window.contains(&at))
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

/// Serials as lower-case hex without leading zeros (Pebble prints them its way, certkeeper
/// as openssl does).
fn normalize_serial(serial: &str) -> String {
    let hex: String = serial
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_ascii_lowercase();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The serial certkeeper holds for each certificate (`None` when it holds none).
fn serials_held(daemon: &Daemon) -> BTreeMap<String, Option<String>> {
    inventory(daemon)
        .into_iter()
        .map(|(id, (_, serial))| (id, serial))
        .collect()
}

/// Every certificate the CA issued, by the set of names in it: each serial of the log, looked
/// up through the management API.
fn issued_by_name_set(pebble: &Pebble, ca: &CaLog) -> BTreeMap<NameSet, Vec<String>> {
    let mut by_names: BTreeMap<NameSet, Vec<String>> = BTreeMap::new();
    for (serial, _) in &ca.issued {
        let names = names_of_serial(pebble, serial);
        by_names.entry(names).or_default().push(serial.clone());
    }
    by_names
}

/// The DNS names of the certificate Pebble issued with `serial`
/// (`/cert-status-by-serial/<hex>` returns it with its status).
fn names_of_serial(pebble: &Pebble, serial: &str) -> NameSet {
    let body = pebble.get(&format!("/cert-status-by-serial/{serial}"));
    let status: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("cert-status-by-serial/{serial}: bad JSON ({e}):\n{body}"));
    let pem = status["Certificate"]
        .as_str()
        .unwrap_or_else(|| panic!("cert-status-by-serial/{serial} has no certificate:\n{body}"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap_or_else(|e| panic!("certificate of serial {serial} is not PEM ({e}):\n{pem}"));
    let cert = pem.parse_x509().unwrap();
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        panic!("certificate of serial {serial} has no subjectAltName:\n{body}");
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Each requested name set issued exactly once by the CA, that certificate the one certkeeper
/// holds, and nothing issued that was not asked for.
fn check_issuance(
    requested: &BTreeMap<String, NameSet>,
    held: &BTreeMap<String, Option<String>>,
    issued: &BTreeMap<NameSet, Vec<String>>,
    failures: &mut Vec<String>,
) {
    for (id, names) in requested {
        let serials = issued.get(names).cloned().unwrap_or_default();
        let holds = held.get(id).cloned().flatten();
        match serials.len() {
            1 => {}
            0 => failures.push(format!("{names:?} ({id}) was never issued by the CA")),
            n => failures.push(format!(
                "{names:?} ({id}) issued {n} times by the CA: serials {} (certkeeper holds {})",
                serials.join(", "),
                holds.as_deref().unwrap_or("none")
            )),
        }
        if let Some(serial) = &holds
            && !serials.contains(serial)
        {
            failures.push(format!(
                "{names:?} ({id}): certkeeper holds serial {serial}, which the CA did not issue \
                 for these names (it did: {serials:?})"
            ));
        }
    }
    let asked: BTreeSet<&NameSet> = requested.values().collect();
    for (names, serials) in issued {
        if !asked.contains(names) {
            failures.push(format!(
                "the CA issued {names:?}, never requested: serials {}",
                serials.join(", ")
            ));
        }
    }
}

/// Which certificate each CA order belongs to, as far as the daemon logged it (a line naming
/// the certificate and the order's URL): the CA's log does not name an order's identifiers.
fn order_owners(log: &str) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for line in log.lines() {
        let (Some(order), Some(cert)) = (after(line, "/my-order/"), after(line, "cert=")) else {
            continue;
        };
        // Certificate and order ids are uuid or base64url characters; a span's `}:` follows
        // the first `cert=`.
        let word = |text: &str| {
            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        owners.entry(word(order)).or_insert_with(|| word(cert));
    }
    owners
}

/// Everything measured, for the summary.
struct Findings<'a> {
    seed: u64,
    elapsed: Duration,
    kills: &'a [Kill],
    ca: &'a CaLog,
    requested: &'a BTreeMap<String, NameSet>,
    held: &'a BTreeMap<String, Option<String>>,
    issued: &'a BTreeMap<NameSet, Vec<String>>,
    owners: &'a BTreeMap<String, String>,
}

/// The totals, the kills, and one line per name set: what the CA issued, what certkeeper
/// holds, and the CA's orders for it (attributed through the daemon's log).
fn summary(f: &Findings<'_>) -> String {
    let ca = f.ca;
    let unattributed: Vec<&String> = ca
        .orders
        .iter()
        .filter(|id| !f.owners.contains_key(id.as_str()))
        .collect();
    let issued_orders: BTreeSet<&str> = ca.issued.iter().map(|(_, o)| o.as_str()).collect();
    // Pebble sets an issued order invalid when a second validation of one of its
    // authorizations (a challenge answered twice) fails later: counted apart.
    let failed = |order: &str| ca.invalid.contains(order) && !issued_orders.contains(order);
    let mut out = format!(
        "chaos summary: seed {}, {:.1?}; CA orders {} (db says {:?}): {} issued, {} invalid \
         without a certificate, {} neither; {} issued orders set invalid afterwards; {} orders \
         not named in the daemon's log; CA certificates {}\n",
        f.seed,
        f.elapsed,
        ca.orders.len(),
        ca.orders_in_db,
        issued_orders.len(),
        ca.orders.iter().filter(|o| failed(o)).count(),
        ca.open_orders(),
        issued_orders
            .iter()
            .filter(|o| ca.invalid.contains(**o))
            .count(),
        unattributed.len(),
        ca.issued.len(),
    );
    for (i, kill) in f.kills.iter().enumerate() {
        writeln!(out, "  kill {}: {}", i + 1, kill.describe()).unwrap();
    }
    for (id, names) in f.requested {
        let serials = f.issued.get(names).cloned().unwrap_or_default();
        let orders: Vec<&String> = ca
            .orders
            .iter()
            .filter(|order| f.owners.get(order.as_str()) == Some(id))
            .collect();
        let invalid = orders.iter().filter(|o| failed(o)).count();
        writeln!(
            out,
            "  {id} {:?}: CA issued {} [{}], certkeeper holds {}; {} CA orders ({invalid} invalid)",
            names.iter().collect::<Vec<_>>(),
            serials.len(),
            serials.join(", "),
            f.held
                .get(id)
                .cloned()
                .flatten()
                .unwrap_or_else(|| "none".into()),
            orders.len(),
        )
        .unwrap();
    }
    if !unattributed.is_empty() {
        let list: Vec<String> = ca
            .orders
            .iter()
            .enumerate()
            .filter(|(_, id)| !f.owners.contains_key(id.as_str()))
            .map(|(at, id)| {
                if cut_off(f.kills, ca, at) {
                    format!("{id} (created just before a kill, left pending)")
                } else {
                    id.clone()
                }
            })
            .collect();
        writeln!(
            out,
            "  CA orders not in the daemon's log: {}",
            list.join(", ")
        )
        .unwrap();
    }
    out
}

/// The daemon's warnings and errors (the last 60), its last 40 lines, and Pebble's last lines.
fn evidence(log: &str, pebble: &Pebble) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let warnings: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
        .collect();
    format!(
        "daemon warnings and errors (last 60 of {}):\n{}\n\ndaemon log tail:\n{}\n\npebble log \
         tail:\n{}",
        warnings.len(),
        warnings[warnings.len().saturating_sub(60)..].join("\n"),
        lines[lines.len().saturating_sub(40)..].join("\n"),
        pebble.log_tail()
    )
}

/// `CHAOS_SEED` when set, otherwise a fresh one.
fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("CHAOS_SEED={text:?} is not a u64: {e}")),
        Err(_) => {
            let mut bytes = [0u8; 8];
            aws_lc_rs::rand::fill(&mut bytes).unwrap();
            u64::from_le_bytes(bytes)
        }
    }
}

/// SplitMix64: a small, well-known generator, enough to place kills reproducibly from a seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `low..high` for test timings.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// Copies the logs to `CHAOS_KEEP_LOGS` (when set) on drop, before the peers' temp dirs go:
/// declared after them, it is dropped first, also when the test panics.
struct KeepLogs(Vec<PathBuf>);

impl KeepLogs {
    fn new(logs: Vec<PathBuf>) -> Self {
        Self(logs)
    }
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        let Some(dir) = std::env::var_os("CHAOS_KEEP_LOGS") else {
            return;
        };
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for log in &self.0 {
            if let Some(name) = log.file_name() {
                let _ = std::fs::copy(log, dir.join(name));
            }
        }
    }
}
