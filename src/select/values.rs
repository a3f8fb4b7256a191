//! The selector's value types and how requests spell them.

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// An application name to match: exact, or with `*` standing for any run of characters.
///
/// Written here rather than taken from a glob crate: those also give `?`, `[…]` and `\`
/// meanings, and application names are free text that may hold any of them literally
/// (`myapp[worker-1]`). Only `*` is special, as the selector documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from its text.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the pattern has no `*`: the engines can compare it in their catalogue query.
    pub fn is_exact(&self) -> bool {
        !self.0.contains('*')
    }

    /// True for `*`, `**`, …: a pattern every name matches, which narrows nothing.
    pub fn matches_everything(&self) -> bool {
        !self.0.is_empty() && self.0.chars().all(|c| c == '*')
    }

    /// Whether `name` matches: the text between the stars must appear in order, the first
    /// piece at the start and the last at the end.
    pub fn matches(&self, name: &str) -> bool {
        let mut pieces = self.0.split('*');
        let first = pieces.next().unwrap_or_default();
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let middle: Vec<&str> = pieces.collect();
        let Some((last, middle)) = middle.split_last() else {
            // No star: exact.
            return rest.is_empty();
        };
        for piece in middle {
            match rest.find(piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client address or CIDR block (`10.0.0.7`, `10.0.0.0/8`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(value_type = String, example = "10.0.0.0/8")]
pub struct AddrBlock(IpNet);

impl AddrBlock {
    /// True for a `/0` block, which every address is in.
    pub fn is_everything(&self) -> bool {
        self.0.prefix_len() == 0
    }

    /// Whether `addr` is in the block. An IPv4 address seen as IPv6 (`::ffff:10.0.0.7`, as
    /// a dual-stack listener reports it) is compared as the IPv4 address it is.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.0.contains(&addr)
    }
}

impl FromStr for AddrBlock {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(net) = s.parse::<IpNet>() {
            // `10.0.0.7/8` is almost always a typo for `10.0.0.0/8`; taking it as the block
            // silently would reach far more than its author read.
            if net.network() != net.addr() {
                return Err(format!(
                    "{s} has host bits set; the block is {}",
                    net.trunc()
                ));
            }
            return Ok(Self(net));
        }
        s.parse::<IpAddr>()
            .map(|addr| Self(IpNet::from(addr)))
            .map_err(|_| {
                format!(
                    "{:?} is not an IP address or CIDR block",
                    s.chars().take(64).collect::<String>()
                )
            })
    }
}

impl fmt::Display for AddrBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Serialize for AddrBlock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AddrBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// A session's state, in the selector's words (PostgreSQL's, with underscores). Engines map
/// their own: MySQL's `Sleep` with a transaction open is `idle_in_transaction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Running a statement.
    Active,
    /// Waiting for the client, no transaction open.
    Idle,
    /// Waiting for the client inside a transaction.
    IdleInTransaction,
    /// Waiting for the client inside a transaction that failed and must be rolled back.
    IdleInTransactionAborted,
}

impl SessionState {
    /// Every state a selector can name.
    pub const ALL: [SessionState; 4] = [
        SessionState::Active,
        SessionState::Idle,
        SessionState::IdleInTransaction,
        SessionState::IdleInTransactionAborted,
    ];

    /// The state as requests and reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Idle => "idle",
            SessionState::IdleInTransaction => "idle_in_transaction",
            SessionState::IdleInTransactionAborted => "idle_in_transaction_aborted",
        }
    }

    /// PostgreSQL's `pg_stat_activity.state` wording; `None` for the states no selector
    /// names (`fastpath function call`, `disabled`).
    pub fn from_postgres(state: &str) -> Option<Self> {
        match state {
            "active" => Some(SessionState::Active),
            "idle" => Some(SessionState::Idle),
            "idle in transaction" => Some(SessionState::IdleInTransaction),
            "idle in transaction (aborted)" => Some(SessionState::IdleInTransactionAborted),
            _ => None,
        }
    }
}

/// Reads one value or a list of them: JSON `"a"` (or one object) or `["a", "b"]`, and a query string's
/// `?x=a` or `?x=a&x=b`. Each value goes through `T`'s own parsing, so a bad one is named
/// in the error (an untagged enum would only say that nothing matched).
pub fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OneOrMany<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            T::deserialize(v.into_deserializer()).map(|one| vec![one])
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Vec<T>, E> {
            T::deserialize(v.into_deserializer()).map(|one| vec![one])
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            // One object (a single `sessions` ref), read by `T` itself.
            T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|one| vec![one])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut all = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(one) = seq.next_element()? {
                all.push(one);
            }
            Ok(all)
        }
    }

    d.deserialize_any(OneOrMany(PhantomData))
}
