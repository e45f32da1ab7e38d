package pki

import (
	"crypto"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
)

// OCSP nonces (RFC 6960 §4.4.1, RFC 8954). golang.org/x/crypto/ocsp
// neither parses request extensions nor writes response extensions, so
// the request is read a second time here and the nonce is added to the
// signed ResponseData of the response it made, which is then signed again.

var oidOCSPNonce = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}

// maxOCSPNonce is RFC 8954 §2.1's upper bound; minimum is 1.
const maxOCSPNonce = 32

var errOCSPNonce = errors.New("pki: malformed OCSP nonce")

type ocspRequestASN1 struct {
	TBS       ocspTBSRequestASN1
	Signature asn1.RawValue `asn1:"explicit,tag:0,optional"`
}

type ocspTBSRequestASN1 struct {
	Version       int           `asn1:"explicit,tag:0,default:0,optional"`
	RequestorName asn1.RawValue `asn1:"explicit,tag:1,optional"`
	RequestList   []asn1.RawValue
	Extensions    []pkix.Extension `asn1:"explicit,tag:2,optional"`
}

// requestNonce returns the nonce extension of a DER OCSP request, or nil
// when it has none. A repeated nonce, one that is not a DER OCTET STRING,
// or one outside 1..32 bytes is errOCSPNonce: RFC 8954 lets a responder
// refuse those as malformed, and echoing an unbounded value would let a
// client make the responder sign data of its choosing.
func requestNonce(der []byte) (*pkix.Extension, error) {
	var req ocspRequestASN1
	rest, err := asn1.Unmarshal(der, &req)
	if err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("%w: cannot parse the request", errOCSPNonce)
	}
	var found *pkix.Extension
	for i, e := range req.TBS.Extensions {
		if !e.Id.Equal(oidOCSPNonce) {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("%w: more than one nonce", errOCSPNonce)
		}
		var n []byte
		rest, err := asn1.Unmarshal(e.Value, &n)
		if err != nil || len(rest) > 0 {
			return nil, fmt.Errorf("%w: not an OCTET STRING", errOCSPNonce)
		}
		if len(n) < 1 || len(n) > maxOCSPNonce {
			return nil, fmt.Errorf("%w: %d bytes (1 to %d allowed)", errOCSPNonce, len(n), maxOCSPNonce)
		}
		found = &req.TBS.Extensions[i]
	}
	return found, nil
}

type ocspResponseASN1 struct {
	Status   asn1.Enumerated
	Response ocspResponseBytesASN1 `asn1:"explicit,tag:0,optional"`
}

type ocspResponseBytesASN1 struct {
	ResponseType asn1.ObjectIdentifier
	Response     []byte
}

type basicOCSPResponseASN1 struct {
	TBS                asn1.RawValue
	SignatureAlgorithm pkix.AlgorithmIdentifier
	Signature          asn1.BitString
	Certificates       []asn1.RawValue `asn1:"explicit,tag:0,optional"`
}

// Signature algorithms golang.org/x/crypto/ocsp signs with, and their
// hashes.
var ocspSigHashes = map[string]crypto.Hash{
	"1.2.840.113549.1.1.11": crypto.SHA256, // sha256WithRSAEncryption
	"1.2.840.113549.1.1.12": crypto.SHA384,
	"1.2.840.113549.1.1.13": crypto.SHA512,
	"1.2.840.10045.4.3.2":   crypto.SHA256, // ecdsa-with-SHA256
	"1.2.840.10045.4.3.3":   crypto.SHA384,
	"1.2.840.10045.4.3.4":   crypto.SHA512,
}

// addResponseNonce adds nonce to the responseExtensions of a successful
// DER OCSP response made by ocsp.CreateResponse and signs it again with
// key.
func addResponseNonce(respDER []byte, nonce pkix.Extension, key crypto.Signer, rnd io.Reader) ([]byte, error) {
	var resp ocspResponseASN1
	if _, err := asn1.Unmarshal(respDER, &resp); err != nil {
		return nil, fmt.Errorf("pki: re-reading OCSP response: %w", err)
	}
	var basic basicOCSPResponseASN1
	if _, err := asn1.Unmarshal(resp.Response.Response, &basic); err != nil {
		return nil, fmt.Errorf("pki: re-reading OCSP response: %w", err)
	}
	h, ok := ocspSigHashes[basic.SignatureAlgorithm.Algorithm.String()]
	if !ok {
		return nil, fmt.Errorf("pki: OCSP signature algorithm %s cannot carry a nonce", basic.SignatureAlgorithm.Algorithm)
	}
	exts, err := asn1.MarshalWithParams([]pkix.Extension{nonce}, "explicit,tag:1")
	if err != nil {
		return nil, err
	}
	tbs, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true,
		Bytes: append(append([]byte{}, basic.TBS.Bytes...), exts...)})
	if err != nil {
		return nil, err
	}
	d := h.New()
	d.Write(tbs)
	sig, err := key.Sign(rnd, d.Sum(nil), h)
	if err != nil {
		return nil, fmt.Errorf("pki: signing OCSP response: %w", err)
	}
	basic.TBS = asn1.RawValue{FullBytes: tbs}
	basic.Signature = asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}
	if resp.Response.Response, err = asn1.Marshal(basic); err != nil {
		return nil, err
	}
	return asn1.Marshal(resp)
}
