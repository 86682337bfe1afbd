//! What certkeeper reads from an ACME CA, in process: each input is taken as each kind of
//! reply, deserialised into the instant-acme type `src/acme/mod.rs` reads it as (problem
//! document, order, authorization, challenge, renewal information), then handed to what
//! certkeeper does with it: the error the problem becomes, the identifier and token checks of
//! an authorization, the renewal window through the planner (`policy::choose_renewal_time`,
//! `policy::next_step`), and, taken as the PEM chain a certificate URL returns, the steps of
//! `accept_chain` (`pem::certificates`, `x509::inspect`, `import::check_links`) and the ARI
//! certificate identifier of the leaf. The conversation itself (directory, nonces, account,
//! Retry-After) is `acme_ca`'s.
//!
//! Properties: no panic; errors made of a CA's problem have a message; a renewal window the
//! CA suggests places the renewal inside it (or now, once it has begun), the next check
//! between a minute and a day ahead, and never moves a renewal after certkeeper's own time or
//! outside the certificate's lifetime.
#![no_main]

use certkeeper::acme::AcmeError;
use certkeeper::policy::{self, Facts, Lifetime, Rule, Rules, Step, SuggestedWindow};
use certkeeper::validation::http;
use certkeeper::{import, pem, x509};
use certkeeper_fuzz::NOW;
use instant_acme::{AuthorizationState, Challenge, Identifier, OrderState, Problem, RenewalInfo};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;
use time::Duration;

const ISSUER: &str = "fuzz-ca";

fn problem(problem: &Problem) {
    assert!(!problem.to_string().is_empty());
    let err = AcmeError::Protocol {
        issuer: ISSUER.to_owned(),
        source: instant_acme::Error::Api(problem.clone()),
    };
    assert!(err.to_string().contains(ISSUER));
    assert_eq!(err.retry_not_before(), None);
}

fn authorization(authz: &AuthorizationState) {
    let shown = authz.identifier().to_string();
    let base = match authz.identifier().identifier {
        Identifier::Dns(name) => name.clone(),
        Identifier::Ip(ip) => ip.to_string(),
        other => format!("{other:?}"),
    };
    let _ = certkeeper::validation::label(&base);
    for challenge in &authz.challenges {
        challenge_reply(challenge);
    }
    let err = AcmeError::Validation {
        issuer: ISSUER.to_owned(),
        identifier: shown,
        detail: format!("authorization is {:?}", authz.status),
    };
    assert!(!err.to_string().is_empty());
}

fn challenge_reply(challenge: &Challenge) {
    if http::is_token(&challenge.token) {
        // A token certkeeper accepts becomes a file name and a URL path segment.
        assert!(!challenge.token.contains(['/', '.', '\\']));
    }
    if let Some(p) = &challenge.error {
        problem(p);
    }
}

/// The renewal window as `Acme::renewal_window` hands it on, then the planner.
fn renewal_info(info: &RenewalInfo) {
    let (start, end) = (info.suggested_window.start, info.suggested_window.end);
    if end <= start {
        return; // refused there as a CA fault
    }
    let window = SuggestedWindow {
        start,
        end,
        retry_after: Some(Duration::hours(6)),
        explanation_url: info.explanation_url.clone(),
    };
    let lifetime = Lifetime {
        not_before: NOW - Duration::days(30),
        not_after: NOW + Duration::days(60),
    };
    let chosen = policy::choose_renewal_time(window, None, NOW, 0.5);
    if start > NOW {
        assert!(start <= chosen.renew_at && chosen.renew_at <= end, "{chosen:?}");
    } else {
        assert_eq!(chosen.renew_at, NOW);
    }
    let wait = chosen.next_check - NOW;
    assert!(policy::ARI_MIN_CHECK <= wait && wait <= policy::ARI_MAX_CHECK);
    for version in [1, 2] {
        let facts = Facts {
            id: "ck-acme",
            renewed: Ok(()),
            lifetime: Some(lifetime),
            version,
            issued_at: None,
            validation_deadline: None,
            failures: None,
            renewal_info: Some(&chosen),
            renew_before: None,
            window: None,
        };
        let rules = Rules {
            renew_before: policy::DEFAULT_RENEW_BEFORE,
            window: None,
        };
        let plan = policy::next_step(&facts, &rules, NOW);
        let own = plan.own.expect("own renewal time");
        match plan.step {
            Step::Renew => {
                let at = plan.at.expect("a time");
                assert!(at <= own.at || plan.rule == Rule::Floor, "{plan:?}");
                assert!(lifetime.not_before <= at && at < lifetime.not_after, "{plan:?}");
            }
            Step::CheckRenewalInfo => assert_eq!(plan.at, Some(chosen.next_check)),
            _ => panic!("a healthy certificate: {plan:?}"),
        }
    }
}

/// The certificate URL's answer, as `accept_chain` takes it apart.
fn chain(text: &str) {
    let ders = pem::certificates(text);
    let Some((leaf, rest)) = ders.split_first() else {
        return;
    };
    let Ok(info) = x509::inspect(leaf) else {
        return;
    };
    let _ = info.names.iter().map(ToString::to_string).count();
    if let Err(err) = import::check_links(leaf, rest) {
        assert!(!err.to_string().is_empty());
    }
    // What `certificate_id` computes from the stored leaf for every ARI request.
    let _ = instant_acme::CertificateIdentifier::try_from(&CertificateDer::from(leaf.as_slice()))
        .map(|id| id.to_string());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = serde_json::from_slice::<Problem>(data) {
        problem(&p);
    }
    if let Ok(order) = serde_json::from_slice::<OrderState>(data) {
        let _ = format!("{:?}", order.status);
        if let Some(p) = &order.error {
            problem(p);
        }
    }
    if let Ok(authz) = serde_json::from_slice::<AuthorizationState>(data) {
        authorization(&authz);
    }
    if let Ok(challenge) = serde_json::from_slice::<Challenge>(data) {
        challenge_reply(&challenge);
    }
    if let Ok(info) = serde_json::from_slice::<RenewalInfo>(data) {
        renewal_info(&info);
    }
    chain(&String::from_utf8_lossy(data));
});
