package pki

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
)

// A PKCS#7 / CMS "certs-only" message (RFC 5652 §5, the degenerate
// SignedData that EST returns, RFC 7030 §4.1.3) is:
//
//	ContentInfo ::= SEQUENCE {
//	    contentType  OID signedData (1.2.840.113549.1.7.2),
//	    content      [0] EXPLICIT SignedData }
//	SignedData ::= SEQUENCE {
//	    version          INTEGER 1,
//	    digestAlgorithms SET {} (empty),
//	    encapContentInfo SEQUENCE { OID data (1.2.840.113549.1.7.1) },
//	    certificates     [0] IMPLICIT SET OF Certificate,
//	    signerInfos      SET {} (empty) }

var (
	oidPKCS7Data       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidPKCS7SignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
)

type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue
}

type encapContentInfo struct {
	ContentType asn1.ObjectIdentifier
}

type signedData struct {
	Version          int
	DigestAlgorithms asn1.RawValue
	EncapContentInfo encapContentInfo
	Certificates     asn1.RawValue `asn1:"optional,tag:0"`
	CRLs             asn1.RawValue `asn1:"optional,tag:1"`
	SignerInfos      asn1.RawValue
}

// EncodeCertsOnly returns the DER of a degenerate PKCS#7 SignedData that
// carries certs and nothing else.
func EncodeCertsOnly(certs []*x509.Certificate) ([]byte, error) {
	var set []byte
	for _, c := range certs {
		set = append(set, c.Raw...)
	}
	emptySet := asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true}
	sd := struct {
		Version          int
		DigestAlgorithms asn1.RawValue
		EncapContentInfo encapContentInfo
		Certificates     asn1.RawValue
		SignerInfos      asn1.RawValue
	}{
		Version:          1,
		DigestAlgorithms: emptySet,
		EncapContentInfo: encapContentInfo{ContentType: oidPKCS7Data},
		Certificates:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: set},
		SignerInfos:      emptySet,
	}
	inner, err := asn1.Marshal(sd)
	if err != nil {
		return nil, fmt.Errorf("pki: encoding PKCS#7: %w", err)
	}
	return asn1.Marshal(contentInfo{
		ContentType: oidPKCS7SignedData,
		Content:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: inner},
	})
}

// maxPKCS7Certs bounds the certificates ParseCertsOnly accepts.
const maxPKCS7Certs = 64

// ParseCertsOnly extracts the certificates of a PKCS#7 SignedData (as
// returned by EST servers). It ignores signer infos and CRLs and fails on
// trailing data.
func ParseCertsOnly(der []byte) ([]*x509.Certificate, error) {
	var ci contentInfo
	rest, err := asn1.Unmarshal(der, &ci)
	if err != nil {
		return nil, fmt.Errorf("pki: PKCS#7: %w", err)
	}
	if len(rest) > 0 {
		return nil, errors.New("pki: PKCS#7: trailing data")
	}
	if !ci.ContentType.Equal(oidPKCS7SignedData) {
		return nil, fmt.Errorf("pki: PKCS#7: content type %v is not signedData", ci.ContentType)
	}
	if ci.Content.Class != asn1.ClassContextSpecific || ci.Content.Tag != 0 || !ci.Content.IsCompound {
		return nil, errors.New("pki: PKCS#7: missing [0] content")
	}
	var sd signedData
	rest, err = asn1.Unmarshal(ci.Content.Bytes, &sd)
	if err != nil {
		return nil, fmt.Errorf("pki: PKCS#7 SignedData: %w", err)
	}
	if len(rest) > 0 {
		return nil, errors.New("pki: PKCS#7 SignedData: trailing data")
	}
	var certs []*x509.Certificate
	b := sd.Certificates.Bytes
	for len(b) > 0 {
		if len(certs) == maxPKCS7Certs {
			return nil, errors.New("pki: PKCS#7: too many certificates")
		}
		var raw asn1.RawValue
		b, err = asn1.Unmarshal(b, &raw)
		if err != nil {
			return nil, fmt.Errorf("pki: PKCS#7 certificates: %w", err)
		}
		c, err := x509.ParseCertificate(raw.FullBytes)
		if err != nil {
			return nil, fmt.Errorf("pki: PKCS#7 certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("pki: PKCS#7: no certificates")
	}
	return certs, nil
}
