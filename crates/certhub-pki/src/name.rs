//! Distinguished names: parsing what people type (`CN=Factory-Y CA, O=Company-X`) and carrying
//! a name from a certificate or CSR into a new certificate without changing its encoding, since
//! chain building compares names byte for byte.

use rcgen::{DistinguishedName, DnType, DnValue};
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::x509::X509Name;

use crate::PkiError;

/// RFC 5280's upper bound for a common name (ub-common-name).
pub(crate) const MAX_CN_LEN: usize = 64;

/// Parses a subject such as `CN=Company-X Root CA, O=Company-X, C=US` (comma separated, `\,`
/// escapes a comma) or the OpenSSL form `/C=US/O=Company-X/CN=Company-X Root CA`. Attributes
/// are encoded in the order written. Known keys: CN, O, OU, C, ST, L, DC, serialNumber,
/// emailAddress.
pub fn parse_subject(input: &str) -> Result<DistinguishedName, PkiError> {
    let bad = |detail: String| PkiError::InvalidSubject {
        subject: input.to_string(),
        detail,
    };
    let trimmed = input.trim();
    let parts: Vec<String> = if let Some(rest) = trimmed.strip_prefix('/') {
        split_unescaped(rest, '/')
    } else {
        split_unescaped(trimmed, ',')
    };
    let mut dn = DistinguishedName::new();
    let mut seen = Vec::new();
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((key, value)) = part.split_once('=') else {
            return Err(bad(format!(
                "{part:?} is not KEY=VALUE (example: \"CN=Factory-Y CA, O=Company-X\")"
            )));
        };
        let key = key.trim();
        let value = value.trim();
        if value.is_empty() {
            return Err(bad(format!("{key} has an empty value")));
        }
        let ty = match key.to_ascii_uppercase().as_str() {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            "ST" => DnType::StateOrProvinceName,
            "L" => DnType::LocalityName,
            "DC" => DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 25]),
            "SERIALNUMBER" => DnType::CustomDnType(vec![2, 5, 4, 5]),
            "EMAILADDRESS" | "E" => DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            other => {
                return Err(bad(format!(
                    "unknown attribute {other:?}; use CN, O, OU, C, ST, L, DC, serialNumber or emailAddress"
                )));
            }
        };
        if seen.contains(&ty) {
            return Err(bad(format!(
                "{key} appears twice; each attribute may appear once"
            )));
        }
        let value = match ty {
            DnType::CommonName if value.chars().count() > MAX_CN_LEN => {
                return Err(bad(format!(
                    "CN has {} characters; X.509 allows at most {MAX_CN_LEN}",
                    value.chars().count()
                )));
            }
            DnType::CountryName => {
                if value.len() != 2 || !value.chars().all(|c| c.is_ascii_uppercase()) {
                    return Err(bad(format!(
                        "C must be a two-letter country code such as US, not {value:?}"
                    )));
                }
                DnValue::PrintableString(
                    value
                        .try_into()
                        .map_err(|_| bad("C is not printable".into()))?,
                )
            }
            DnType::CustomDnType(ref oid) if oid.first() != Some(&2) => {
                // DC and emailAddress are IA5String by definition.
                DnValue::Ia5String(
                    value
                        .try_into()
                        .map_err(|_| bad(format!("{key} must be ASCII")))?,
                )
            }
            DnType::CustomDnType(_) => DnValue::PrintableString(
                value
                    .try_into()
                    .map_err(|_| bad(format!("{key} must be a printable string")))?,
            ),
            _ => DnValue::Utf8String(value.to_string()),
        };
        seen.push(ty.clone());
        dn.push(ty, value);
    }
    if seen.is_empty() {
        return Err(bad("the subject is empty; give at least CN=...".into()));
    }
    Ok(dn)
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let c = match c {
            '\\' => match chars.next() {
                Some(next) => next,
                None => break,
            },
            c if c == sep => {
                parts.push(String::new());
                continue;
            }
            c => c,
        };
        if let Some(p) = parts.last_mut() {
            p.push(c);
        }
    }
    parts
}

/// Converts a parsed name into rcgen's model, keeping each value's string type so the encoding
/// (and so name chaining) is unchanged. Refuses what rcgen cannot represent.
pub(crate) fn dn_from_x509(
    name: &X509Name<'_>,
    whose: &str,
) -> Result<DistinguishedName, PkiError> {
    let unsupported = |detail: &str| {
        PkiError::Unsupported(format!(
            "the subject of {whose} cannot be reproduced: {detail}"
        ))
    };
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(unsupported("multi-valued or empty RDNs are not supported"));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| unsupported("an attribute type OID is too large"))?
            .collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err(unsupported("an attribute appears twice"));
        }
        let data = attr.attr_value().data;
        let text = || std::str::from_utf8(data).map_err(|_| unsupported("a value is not UTF-8"));
        let value = match attr.attr_value().header.tag() {
            Tag::PrintableString => DnValue::PrintableString(
                text()?
                    .try_into()
                    .map_err(|_| unsupported("bad PrintableString"))?,
            ),
            Tag::Ia5String => DnValue::Ia5String(
                text()?
                    .try_into()
                    .map_err(|_| unsupported("bad IA5String"))?,
            ),
            Tag::Utf8String => DnValue::Utf8String(text()?.to_string()),
            Tag::T61String => DnValue::TeletexString(
                text()?
                    .try_into()
                    .map_err(|_| unsupported("bad TeletexString"))?,
            ),
            Tag::BmpString => DnValue::BmpString(
                rcgen::string::BmpString::from_utf16be(data.to_vec())
                    .map_err(|_| unsupported("bad BMPString"))?,
            ),
            Tag::UniversalString => DnValue::UniversalString(
                rcgen::string::UniversalString::from_utf32be(data.to_vec())
                    .map_err(|_| unsupported("bad UniversalString"))?,
            ),
            _ => return Err(unsupported("a value has an unusual string type")),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

/// The first common name of a certificate (DER), if it parses and has one as a string.
pub fn certificate_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    common_name(cert.subject())
}

/// The first common name of a parsed name, if it is a string.
pub(crate) fn common_name(name: &X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        let a = parse_subject("CN=Factory-Y CA, O=Company-X\\, Inc., C=US").unwrap();
        assert_eq!(
            a.get(&DnType::OrganizationName),
            Some(&DnValue::Utf8String("Company-X, Inc.".into()))
        );
        let b = parse_subject("/C=US/O=Company-X/CN=Root").unwrap();
        assert_eq!(b.iter().count(), 3);
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", "Factory", "CN=", "XX=1", "C=USA", "CN=a, CN=b"] {
            assert!(parse_subject(bad).is_err(), "{bad}");
        }
        assert!(parse_subject(&format!("CN={}", "x".repeat(65))).is_err());
    }
}
