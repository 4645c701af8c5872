//! Just enough DER to read what the emulator needs from X.509: a certificate's SubjectPublicKeyInfo, and
//! an RSA public key's modulus and exponent (for the JWKS document and client-assertion checks).

/// One TLV: (tag, contents, rest of the input).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The whole TLV (header included) of the first element, and the rest.
fn tlv_raw(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, content, rest) = tlv(input)?;
    let used = input.len() - rest.len();
    let _ = content;
    Some((&input[..used], rest))
}

/// The DER of the SubjectPublicKeyInfo inside an X.509 certificate.
pub fn cert_spki(cert_der: &[u8]) -> Option<&[u8]> {
    let (_, cert, _) = tlv(cert_der)?; // Certificate SEQUENCE
    let (_, tbs, _) = tlv(cert)?; // tbsCertificate SEQUENCE
    let mut rest = tbs;
    // [0] version is optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    for _ in 0..5 {
        // serialNumber, signature, issuer, validity, subject
        rest = tlv(rest)?.2;
    }
    Some(tlv_raw(rest)?.0)
}

/// (modulus, exponent) big-endian without leading zero bytes, from an RSA SubjectPublicKeyInfo.
pub fn rsa_components(spki_der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, spki, _) = tlv(spki_der)?;
    let (_, _alg, rest) = tlv(spki)?;
    let (tag, bits, _) = tlv(rest)?;
    if tag != 0x03 || bits.first() != Some(&0) {
        return None;
    }
    let (_, rsa, _) = tlv(&bits[1..])?;
    let (_, n, rest) = tlv(rsa)?;
    let (_, e, _) = tlv(rest)?;
    let strip = |v: &[u8]| {
        let i = v.iter().position(|b| *b != 0).unwrap_or(v.len());
        v[i..].to_vec()
    };
    Some((strip(n), strip(e)))
}

/// The PKCS#1 RSAPublicKey inside an RSA SubjectPublicKeyInfo.
pub fn rsa_pkcs1(spki_der: &[u8]) -> Option<&[u8]> {
    let (_, spki, _) = tlv(spki_der)?;
    let (_, _alg, rest) = tlv(spki)?;
    let (tag, bits, _) = tlv(rest)?;
    if tag != 0x03 || bits.first() != Some(&0) {
        return None;
    }
    Some(&bits[1..])
}

/// Decodes the first PEM block with the given label.
pub fn pem_decode(pem: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rcgen_certificate() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["example".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let spki = cert_spki(cert.der()).unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(spki, key.subject_public_key_info().as_slice());
        let (n, e) = rsa_components(spki).unwrap();
        assert_eq!(n.len(), 256);
        assert_eq!(e, vec![1, 0, 1]);
        assert_eq!(
            pem_decode(&cert.pem(), "CERTIFICATE").unwrap(),
            cert.der().to_vec()
        );
    }

    #[test]
    fn garbage_is_none_not_panic() {
        for input in [&b""[..], &[0x30], &[0x30, 0x85, 1, 2, 3, 4, 5], &[0x30, 0x05, 1]] {
            assert!(cert_spki(input).is_none());
            assert!(rsa_components(input).is_none());
        }
    }
}
