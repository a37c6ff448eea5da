//! Publishing the primary in DNS: one RFC 2136 UPDATE, signed with TSIG,
//! that replaces the record of the configured name with this node's address
//! (A, AAAA, or CNAME for a host name), and a TXT record at `_vigil.<name>`
//! with the term. The TXT record is the fencing token: the update carries a
//! prerequisite that the TXT still holds what was read, and a node never
//! overwrites a record published with a newer term.

use anyhow::{anyhow, bail, Context, Result};
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::{DnsHandle, FirstAnswer};
use hickory_proto::op::update_message::UpdateMessage;
use hickory_proto::op::{DnsRequest, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{tsig::TsigAlgorithm, A, AAAA, CNAME, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// A TSIG key as `tsig-keygen` writes it.
#[derive(Clone)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TsigKey {{ name: {:?}, algorithm: {:?}, secret: <redacted> }}", self.name, self.algorithm)
    }
}

impl TsigKey {
    /// Parses BIND's `key "name" { algorithm hmac-sha256; secret "..."; };`.
    pub fn parse(text: &str) -> Result<TsigKey, String> {
        if !text.trim_start().starts_with("key") {
            return Err("no `key \"name\" { ... }` block".into());
        }
        // The first quoted string is the key's name.
        let name = text.split('"').nth(1).ok_or("no `key \"name\" { ... }` block")?.to_string();
        let field = |k: &str| {
            let start = text.find(&format!("{k} ")).or_else(|| text.find(&format!("{k}\t")))? + k.len();
            let rest = &text[start..];
            Some(rest[..rest.find(';')?].trim().trim_matches('"').to_string())
        };
        let algorithm = field("algorithm").ok_or("no algorithm")?.to_lowercase();
        let secret = field("secret").ok_or("no secret")?;
        let secret = data_encoding::BASE64.decode(secret.as_bytes()).map_err(|e| format!("secret is not base64: {e}"))?;
        algo(&algorithm)?;
        Ok(TsigKey { name, algorithm, secret })
    }

    pub fn load(path: &Path) -> Result<TsigKey, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        TsigKey::parse(&text)
    }

    fn signer(&self) -> Result<TSigner> {
        let name = Name::from_ascii(&self.name).map_err(|e| anyhow!("TSIG key name {:?}: {e}", self.name))?;
        TSigner::new(self.secret.clone(), algo(&self.algorithm).map_err(|e| anyhow!(e))?, name, 300)
            .map_err(|e| anyhow!("TSIG signer: {e}"))
    }
}

fn algo(a: &str) -> Result<TsigAlgorithm, String> {
    match a.trim_end_matches('.') {
        "hmac-sha256" => Ok(TsigAlgorithm::HmacSha256),
        "hmac-sha384" => Ok(TsigAlgorithm::HmacSha384),
        "hmac-sha512" => Ok(TsigAlgorithm::HmacSha512),
        other => Err(format!(
            "TSIG algorithm {other:?} cannot sign here; use hmac-sha256, hmac-sha384 or hmac-sha512 (tsig-keygen -a hmac-sha256)"
        )),
    }
}

/// Where and what to publish.
#[derive(Debug, Clone)]
pub struct DnsTarget {
    pub server: SocketAddr,
    pub zone: String,
    pub name: String,
    pub ttl: u32,
    pub key: TsigKey,
    pub txt_term: bool,
    pub timeout: Duration,
}

/// What one publication did.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    /// The record now names this node.
    Updated,
    /// A newer term already owns the record: nothing was changed.
    NewerTermOwnsIt(i64),
}

fn fqdn(s: &str) -> Result<Name> {
    let mut n = Name::from_ascii(s).map_err(|e| anyhow!("invalid DNS name {s:?}: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

/// What `name` resolves to at `server` now (an A or AAAA record), asked
/// without a signature and without a cache: how a client that looks the
/// primary up on each new connection sees the record (a caching resolver
/// adds up to the record's TTL).
pub async fn resolve(server: SocketAddr, name: &str, timeout: Duration) -> Result<Option<IpAddr>> {
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default()).with_timeout(Some(timeout)).build();
    let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(bg);
    for t in [RecordType::A, RecordType::AAAA] {
        let resp = client.query(fqdn(name)?, DNSClass::IN, t).await.map_err(|e| anyhow!("query: {e}"))?;
        for r in &resp.answers {
            match &r.data {
                RData::A(a) => return Ok(Some(IpAddr::V4(a.0))),
                RData::AAAA(a) => return Ok(Some(IpAddr::V6(a.0))),
                _ => continue,
            }
        }
    }
    Ok(None)
}

fn rdata_for(address: &str) -> Result<RData> {
    Ok(match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => RData::A(A(v4)),
        Ok(IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
        Err(_) => RData::CNAME(CNAME(fqdn(address)?)),
    })
}

/// The sentence for a failed update, since hickory's own text for a
/// rejected signature ("truncated HMACs") misleads.
fn explain(e: impl std::fmt::Display) -> anyhow::Error {
    let s = e.to_string();
    if s.contains("truncated HMAC") {
        // The server answered BADSIG with an empty MAC; the library's own
        // wording ("truncated HMACs") hides that.
        return anyhow!("the DNS server rejected the TSIG signature: wrong key name, secret or algorithm (BADSIG)");
    }
    if s.contains("HMAC") || s.contains("TSIG") || s.contains("tsig") || s.contains("BADSIG") || s.contains("BADKEY") {
        return anyhow!("the DNS server rejected the TSIG signature: wrong key name, secret or algorithm ({s})");
    }
    anyhow!("DNS update failed: {s}")
}

fn rcode_error(code: ResponseCode, what: &str) -> anyhow::Error {
    let hint = match code {
        ResponseCode::NotAuth => "the server is not authoritative for the zone, or does not accept this key (NOTAUTH)",
        ResponseCode::Refused => "the server refused the update: is `allow-update { key ... }` set for this zone and key? (REFUSED)",
        ResponseCode::NotZone => "the name is not inside the zone (NOTZONE)",
        ResponseCode::ServFail => "the server failed (SERVFAIL); see its log",
        _ => "",
    };
    anyhow!("{what}: {code:?} {hint}")
}

impl DnsTarget {
    /// The target of a validated `[dns]` section (its key already loaded).
    pub fn from_config(d: &crate::config::DnsConfig) -> DnsTarget {
        DnsTarget {
            server: d.server.parse().expect("validated with the config"),
            zone: d.zone.clone(),
            name: d.name.clone(),
            ttl: d.ttl.as_secs() as u32,
            key: d.key.clone().expect("loaded with the config"),
            txt_term: d.txt_term,
            timeout: d.timeout,
        }
    }

    async fn client(&self) -> Result<Client<TokioRuntimeProvider>> {
        let stream = UdpClientStream::builder(self.server, TokioRuntimeProvider::default())
            .with_timeout(Some(self.timeout))
            .with_signer(Some(self.key.signer()?))
            .build();
        let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
        tokio::spawn(bg);
        Ok(client)
    }

    fn txt_name(&self) -> Result<Name> {
        fqdn(&format!("_vigil.{}", self.name.trim_end_matches('.')))
    }

    /// The term in the TXT record, and its raw text, if there is one.
    async fn read_term(&self, client: &mut Client<TokioRuntimeProvider>) -> Result<Option<(i64, String)>> {
        let resp = client.query(self.txt_name()?, DNSClass::IN, RecordType::TXT).await.map_err(|e| anyhow!("TXT query: {e}"))?;
        for r in &resp.answers {
            if let RData::TXT(t) = &r.data {
                let text = t.to_string();
                let term = text.split_whitespace().find_map(|w| w.strip_prefix("term=")).and_then(|v| v.trim_matches('"').parse().ok());
                if let Some(term) = term {
                    return Ok(Some((term, text)));
                }
            }
        }
        Ok(None)
    }

    /// Replaces the record with `address` for `term` in one signed UPDATE.
    pub async fn publish(&self, address: &str, term: i64, node: &str) -> Result<Published> {
        let mut client = self.client().await?;
        let zone = fqdn(&self.zone)?;
        let name = fqdn(&self.name)?;
        if !zone.zone_of(&name) {
            bail!("{} is not inside the zone {}", self.name, self.zone);
        }
        let mut msg = Message::query();
        msg.metadata.op_code = OpCode::Update;
        msg.metadata.recursion_desired = false;
        let mut q = Query::new();
        q.set_name(zone).set_query_class(DNSClass::IN).set_query_type(RecordType::SOA);
        msg.add_zone(q);

        if self.txt_term {
            let txt = self.txt_name()?;
            match self.read_term(&mut client).await? {
                Some((current, _)) if current > term => return Ok(Published::NewerTermOwnsIt(current)),
                Some((_, raw)) => {
                    // Prerequisite: the TXT still holds what we read (value-dependent RRset exists).
                    let parts: Vec<String> = raw.split('"').filter(|p| !p.trim().is_empty()).map(str::to_string).collect();
                    let mut pre = Record::from_rdata(txt.clone(), 0, RData::TXT(TXT::new(parts)));
                    pre.dns_class = DNSClass::IN;
                    msg.add_pre_requisite(pre);
                }
                None => {
                    // Prerequisite: no TXT yet (RRset does not exist).
                    let mut pre = Record::update0(txt.clone(), 0, RecordType::TXT);
                    pre.dns_class = DNSClass::NONE;
                    msg.add_pre_requisite(pre.into_record_of_rdata());
                }
            }
            let mut del = Record::update0(txt.clone(), 0, RecordType::TXT);
            del.dns_class = DNSClass::ANY;
            msg.add_update(del.into_record_of_rdata());
            msg.add_update(Record::from_rdata(txt, self.ttl, RData::TXT(TXT::new(vec![format!("term={term} node={node}")]))));
        }
        // Replace whatever the name held (A, AAAA or CNAME) with the new record.
        for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            let mut del = Record::update0(name.clone(), 0, t);
            del.dns_class = DNSClass::ANY;
            msg.add_update(del.into_record_of_rdata());
        }
        msg.add_update(Record::from_rdata(name, self.ttl, rdata_for(address)?));

        let resp = client.send(DnsRequest::from(msg)).first_answer().await.map_err(explain)?;
        match resp.metadata.response_code {
            ResponseCode::NoError => Ok(Published::Updated),
            ResponseCode::NXRRSet | ResponseCode::YXRRSet => {
                // Someone changed the TXT between our read and our update.
                match self.read_term(&mut client).await? {
                    Some((t, _)) if t > term => Ok(Published::NewerTermOwnsIt(t)),
                    _ => bail!("the record changed while it was being updated; will retry"),
                }
            }
            code => Err(rcode_error(code, "DNS update")),
        }
    }

    /// Asks the server what the name holds now: (address, ttl).
    pub async fn lookup(&self) -> Result<Option<(String, u32)>> {
        let mut client = self.client().await?;
        for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            let resp = client.query(fqdn(&self.name)?, DNSClass::IN, t).await.map_err(|e| anyhow!("query: {e}"))?;
            for r in &resp.answers {
                let v = match &r.data {
                    RData::A(a) => a.0.to_string(),
                    RData::AAAA(a) => a.0.to_string(),
                    RData::CNAME(c) => c.0.to_string().trim_end_matches('.').to_string(),
                    _ => continue,
                };
                return Ok(Some((v, r.ttl)));
            }
        }
        Ok(None)
    }

    /// Publishes and then verifies by querying the server.
    pub async fn publish_verified(&self, address: &str, term: i64, node: &str) -> Result<Published> {
        let p = self.publish(address, term, node).await?;
        if p == Published::Updated {
            let got = self.lookup().await.context("verifying the update")?;
            let want = address.trim_end_matches('.');
            match got {
                Some((a, ttl)) if a == want && ttl <= self.ttl => {}
                other => bail!("after the update the server answers {other:?}, not {want}"),
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsig_keys_parse_as_tsig_keygen_writes_them() {
        let k = TsigKey::parse("key \"vigil-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0c2VjcmV0c2VjcmV0\";\n};\n").unwrap();
        assert_eq!(k.name, "vigil-key");
        assert_eq!(k.secret, b"secretsecretsecret");
        assert!(!format!("{k:?}").contains("c2Vj"));
        let e = TsigKey::parse("key \"k\" { algorithm hmac-md5; secret \"AAAA\"; };").unwrap_err();
        assert!(e.contains("hmac-sha256"), "{e}");
        assert!(TsigKey::parse("nonsense").is_err());
    }

    #[test]
    fn address_kinds() {
        assert!(matches!(rdata_for("10.0.0.1").unwrap(), RData::A(_)));
        assert!(matches!(rdata_for("::1").unwrap(), RData::AAAA(_)));
        assert!(matches!(rdata_for("db1.example.com").unwrap(), RData::CNAME(_)));
    }

    #[test]
    fn signature_errors_are_translated() {
        let e = explain(
            "protocol error: Please file an issue with https://github.com/hickory-dns/hickory-dns to support truncated HMACs with TSIG",
        );
        assert!(e.to_string().contains("wrong key name, secret or algorithm"));
    }
}
