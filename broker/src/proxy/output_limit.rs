//! The one decision about a request's output limit, so that what admission reserves for and what the
//! provider is allowed to produce are the same number.
//!
//! A client may name its limit in any of three fields (`max_output_tokens`: Responses;
//! `max_completion_tokens` and the older `max_tokens`: Chat Completions), on either ingress, and several at
//! once. The effective limit is the **smallest** of those it sent ([`Limits::requested`]). Admission sizes
//! the reservation from exactly that number (capped by `output_reserve_cap_tokens`, see
//! docs/governance.md), and the request that reaches the provider carries exactly that number, in the one
//! field that provider reads, and no other limit field:
//!
//! | ingress → provider | field forwarded |
//! |---|---|
//! | Responses → `openai`, `azure-openai` (pass-through) | `max_output_tokens` |
//! | Responses → `openai-chat` (translated) | `max_tokens` (`translate::chat`) |
//! | Responses → `anthropic` (translated) | `max_tokens` (`translate::anthropic`; thinking fits inside it) |
//! | Chat → `openai`, `azure-openai` (pass-through) | `max_completion_tokens` |
//! | Chat → `openai-chat` (pass-through) | `max_tokens` (what every Chat-compatible server reads) |
//! | Messages → `anthropic` (pass-through) | `max_tokens` |
//! | Messages → `openai`, `azure-openai` (translated) | `max_completion_tokens` (`translate::messages`) |
//! | Messages → `openai-chat` (translated) | `max_tokens` (`translate::messages`) |
//!
//! Without any client limit nothing is added (Anthropic, which requires one, gets the provider's default):
//! the reservation is then the cap and the documented overspend bound covers the rest.

use super::upstream::Endpoint;
use crate::config::ProviderKind;
use bytes::Bytes;
use serde_json::Value;

/// Every output-limit field an API defines.
pub const FIELDS: [&str; 3] = ["max_output_tokens", "max_completion_tokens", "max_tokens"];

/// The output-limit fields of a request as the client sent them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_output_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub max_tokens: Option<u64>,
}

impl Limits {
    /// The effective limit: the smallest the client asked for, in whichever field.
    pub fn requested(&self) -> Option<u64> {
        [
            self.max_output_tokens,
            self.max_completion_tokens,
            self.max_tokens,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn present(&self) -> usize {
        [
            self.max_output_tokens,
            self.max_completion_tokens,
            self.max_tokens,
        ]
        .iter()
        .filter(|f| f.is_some())
        .count()
    }
}

/// The limit field of the ingress's own API.
fn native(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Responses => "max_output_tokens",
        Endpoint::ChatCompletions => "max_completion_tokens",
        Endpoint::Messages | Endpoint::CountTokens => "max_tokens",
    }
}

/// The client body, carrying the effective limit in the ingress's own field and no other limit field.
/// Untouched (no re-serialisation) when that is already so.
pub fn normalize(body: Bytes, endpoint: Endpoint, limits: &Limits) -> Bytes {
    let Some(limit) = limits.requested() else {
        return body;
    };
    let field = native(endpoint);
    let own = match endpoint {
        Endpoint::Responses => limits.max_output_tokens,
        Endpoint::ChatCompletions => limits.max_completion_tokens,
        Endpoint::Messages | Endpoint::CountTokens => limits.max_tokens,
    };
    if limits.present() == 1 && own.is_some() {
        return body;
    }
    rewrite(&body, |o| {
        for f in FIELDS {
            o.remove(f);
        }
        o.insert(field.into(), Value::from(limit));
    })
    .unwrap_or(body)
}

/// The normalized body as one provider must receive it on a pass-through route: Chat-compatible servers
/// (`openai-chat`) read `max_tokens`, not `max_completion_tokens`.
pub fn for_provider(body: Bytes, endpoint: Endpoint, kind: ProviderKind, limits: &Limits) -> Bytes {
    if endpoint != Endpoint::ChatCompletions || kind != ProviderKind::OpenaiChat {
        return body;
    }
    let Some(limit) = limits.requested() else {
        return body;
    };
    rewrite(&body, |o| {
        for f in FIELDS {
            o.remove(f);
        }
        o.insert("max_tokens".into(), Value::from(limit));
    })
    .unwrap_or(body)
}

fn rewrite(body: &[u8], f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    f(v.as_object_mut()?);
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::pricing::{Estimator, ModelPrice, Pricing, Rates, ServiceTier};
    use crate::translate::{anthropic, chat, messages};
    use proptest::prelude::*;
    use serde_json::json;

    /// What the provider is allowed to produce: the limit fields of the body it receives (after
    /// translation), which must be at most one.
    fn forwarded(endpoint: Endpoint, kind: ProviderKind, body: &Bytes) -> Option<u64> {
        let v: Value = serde_json::from_slice(body).expect("json");
        let upstream = match (endpoint, kind) {
            (Endpoint::Responses, ProviderKind::OpenaiChat) => {
                chat::request(&v, "m").expect("chat").0
            }
            (Endpoint::Responses, ProviderKind::Anthropic) => {
                anthropic::request(&v, "m", anthropic::Options::default())
                    .expect("anthropic")
                    .0
            }
            (Endpoint::Messages, ProviderKind::OpenaiChat) => {
                messages::request(&v, "m", messages::ChatFlavor::Compatible)
                    .expect("chat")
                    .0
            }
            (Endpoint::Messages, ProviderKind::Openai | ProviderKind::AzureOpenai) => {
                messages::request(&v, "m", messages::ChatFlavor::OpenAi)
                    .expect("chat")
                    .0
            }
            _ => v,
        };
        let present: Vec<u64> = FIELDS
            .iter()
            .filter_map(|f| upstream.get(*f).and_then(Value::as_u64))
            .collect();
        assert!(
            present.len() <= 1,
            "more than one limit field reaches the provider: {upstream}"
        );
        // (On the Messages ingress the client's own thinking budget passes through as it sent it.)
        if kind == ProviderKind::Anthropic
            && endpoint == Endpoint::Responses
            && let Some(b) = upstream
                .pointer("/thinking/budget_tokens")
                .and_then(Value::as_u64)
        {
            assert!(
                b < present[0],
                "thinking must fit inside max_tokens: {upstream}"
            );
        }
        present.first().copied()
    }

    const KINDS: [ProviderKind; 4] = [
        ProviderKind::Openai,
        ProviderKind::AzureOpenai,
        ProviderKind::OpenaiChat,
        ProviderKind::Anthropic,
    ];

    proptest! {
        /// Every ingress × provider × combination of limit fields (and a reasoning effort that asks for a
        /// large thinking budget): the provider receives exactly the limit the reservation was sized from.
        #[test]
        fn reserved_limit_is_forwarded_limit(
            ingress in 0usize..3,
            kind in 0usize..4,
            mot in proptest::option::of(1u64..200_000),
            mct in proptest::option::of(1u64..200_000),
            mt in proptest::option::of(1u64..200_000),
            effort in proptest::option::of(prop_oneof![Just("low"), Just("medium"), Just("high"), Just("xhigh")]),
        ) {
            let endpoint = [Endpoint::Responses, Endpoint::ChatCompletions, Endpoint::Messages][ingress];
            let kind = KINDS[kind];
            prop_assume!(!(endpoint == Endpoint::ChatCompletions && kind == ProviderKind::Anthropic));
            let mut body = if endpoint == Endpoint::Responses {
                json!({"model": "m", "input": "hello"})
            } else {
                json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]})
            };
            for (f, v) in FIELDS.iter().zip([mot, mct, mt]) {
                if let Some(v) = v { body[*f] = json!(v); }
            }
            match (effort, endpoint) {
                // Claude Code asks for thinking with a budget; translated, it is a reasoning effort.
                (Some(e), Endpoint::Messages) => {
                    let budget = match e { "low" => 1_024, "medium" => 8_192, "high" => 16_384, _ => 31_999 };
                    body["thinking"] = json!({"type": "enabled", "budget_tokens": budget});
                }
                (Some(e), _) => body["reasoning"] = json!({"effort": e}),
                (None, _) => {}
            }
            let limits = Limits { max_output_tokens: mot, max_completion_tokens: mct, max_tokens: mt };
            let raw = Bytes::from(serde_json::to_vec(&body).expect("json"));
            let sent = for_provider(normalize(raw, endpoint, &limits), endpoint, kind, &limits);
            let fwd = forwarded(endpoint, kind, &sent);
            let requested = limits.requested();
            let est = Estimator::default();
            let pricing = Pricing::flat(Rates::from(ModelPrice::usd_micro(1, 1, 1, 1)), "test");
            let reserved = est.estimate(&pricing, ServiceTier::Standard, 10, requested).output_tokens;
            match requested {
                Some(l) => {
                    prop_assert_eq!(fwd, Some(l), "forwarded != requested for {:?} → {:?}", endpoint, kind);
                    prop_assert_eq!(reserved, l.min(est.output_reserve_cap_tokens));
                    // At or under the cap, the reservation covers everything the provider may produce.
                    if l <= est.output_reserve_cap_tokens {
                        prop_assert_eq!(reserved, fwd.unwrap_or(0));
                    }
                }
                None => {
                    prop_assert_eq!(reserved, est.output_reserve_cap_tokens);
                    if kind != ProviderKind::Anthropic {
                        prop_assert_eq!(fwd, None, "nothing added without a client limit");
                    }
                }
            }
        }
    }

    #[test]
    fn the_reproduced_bypasses_are_closed() {
        // Anthropic, Responses ingress, max_output_tokens 1 with high effort: max_tokens 1, no thinking.
        let l = Limits {
            max_output_tokens: Some(1),
            ..Limits::default()
        };
        let b = Bytes::from(
            r#"{"model":"m","input":"x","max_output_tokens":1,"reasoning":{"effort":"high"}}"#,
        );
        let sent = for_provider(
            normalize(b, Endpoint::Responses, &l),
            Endpoint::Responses,
            ProviderKind::Anthropic,
            &l,
        );
        let v: Value = serde_json::from_slice(&sent).expect("json");
        let (up, _) = anthropic::request(&v, "m", anthropic::Options::default()).expect("t");
        assert_eq!(up["max_tokens"], 1);
        assert!(up.get("thinking").is_none(), "{up}");
        // Anthropic with max_tokens 1 on the Responses ingress: 1, not the 32000 default.
        let l = Limits {
            max_tokens: Some(1),
            ..Limits::default()
        };
        let b = Bytes::from(r#"{"model":"m","input":"x","max_tokens":1}"#);
        let v: Value =
            serde_json::from_slice(&normalize(b, Endpoint::Responses, &l)).expect("json");
        assert_eq!(
            anthropic::request(&v, "m", anthropic::Options::default())
                .expect("t")
                .0["max_tokens"],
            1
        );
        // A Chat-compatible upstream with max_tokens 1 on the Responses ingress: max_tokens 1.
        let v: Value = serde_json::from_slice(&normalize(
            Bytes::from(r#"{"model":"m","input":"x","max_tokens":1}"#),
            Endpoint::Responses,
            &l,
        ))
        .expect("json");
        assert_eq!(chat::request(&v, "m").expect("t").0["max_tokens"], 1);
        // Chat ingress with max_output_tokens 1 and max_completion_tokens 100000: 1 reaches the upstream.
        let l = Limits {
            max_output_tokens: Some(1),
            max_completion_tokens: Some(100_000),
            ..Limits::default()
        };
        let b = Bytes::from(
            r#"{"model":"m","messages":[],"max_output_tokens":1,"max_completion_tokens":100000}"#,
        );
        let v: Value =
            serde_json::from_slice(&normalize(b, Endpoint::ChatCompletions, &l)).expect("json");
        assert_eq!(v["max_completion_tokens"], 1);
        assert!(v.get("max_output_tokens").is_none());
    }

    #[test]
    fn a_body_already_in_shape_is_not_rewritten() {
        let l = Limits {
            max_output_tokens: Some(7),
            ..Limits::default()
        };
        let b = Bytes::from_static(br#"{ "model" : "m", "max_output_tokens" : 7 }"#);
        assert_eq!(normalize(b.clone(), Endpoint::Responses, &l), b);
        let none = Limits::default();
        assert_eq!(normalize(b.clone(), Endpoint::ChatCompletions, &none), b);
    }
}
