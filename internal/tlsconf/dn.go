package tlsconf

import (
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

var oidCN = asn1.ObjectIdentifier{2, 5, 4, 3}

// shortNames are OpenSSL's short names for attribute types, used by its
// RFC 2253 printing. Other types print as dotted OIDs.
var shortNames = map[string]string{
	"2.5.4.3":                    "CN",
	"2.5.4.4":                    "SN",
	"2.5.4.5":                    "serialNumber",
	"2.5.4.6":                    "C",
	"2.5.4.7":                    "L",
	"2.5.4.8":                    "ST",
	"2.5.4.9":                    "street",
	"2.5.4.10":                   "O",
	"2.5.4.11":                   "OU",
	"2.5.4.12":                   "title",
	"2.5.4.13":                   "description",
	"2.5.4.15":                   "businessCategory",
	"2.5.4.17":                   "postalCode",
	"2.5.4.41":                   "name",
	"2.5.4.42":                   "GN",
	"2.5.4.43":                   "initials",
	"2.5.4.44":                   "generationQualifier",
	"2.5.4.45":                   "x500UniqueIdentifier",
	"2.5.4.46":                   "dnQualifier",
	"2.5.4.65":                   "pseudonym",
	"2.5.4.72":                   "role",
	"2.5.4.97":                   "organizationIdentifier",
	"1.2.840.113549.1.9.1":       "emailAddress",
	"1.2.840.113549.1.9.2":       "unstructuredName",
	"0.9.2342.19200300.100.1.1":  "UID",
	"0.9.2342.19200300.100.1.25": "DC",
	"1.3.6.1.4.1.311.60.2.1.1":   "jurisdictionL",
	"1.3.6.1.4.1.311.60.2.1.2":   "jurisdictionST",
	"1.3.6.1.4.1.311.60.2.1.3":   "jurisdictionC",
}

type attrTypeAndValue struct {
	Type  asn1.ObjectIdentifier
	Value asn1.RawValue
}

// rdnSET is one relative distinguished name (a SET OF attributes; the
// "SET" suffix tells encoding/asn1 so).
type rdnSET []attrTypeAndValue

// SubjectDN returns cert's subject as OpenSSL prints it with
// `-nameopt RFC2253` (X509_NAME_print_ex with XN_FLAG_RFC2253), which is
// what Mosquitto's `use_subject_as_username` uses: RDNs in reverse order
// separated by ',', multi-valued RDNs joined by '+', OpenSSL short names,
// members of a multi-valued RDN also reversed, RFC 2253 escaping, bytes above 0x7F and control bytes as \XX, and values
// of unknown attribute types or non-string types as #hex of their DER.
func SubjectDN(cert *x509.Certificate) (string, error) {
	return FormatDN(cert.RawSubject)
}

// FormatDN formats a DER-encoded X.501 Name like SubjectDN.
func FormatDN(der []byte) (string, error) {
	var seq []rdnSET
	rest, err := asn1.Unmarshal(der, &seq)
	if err != nil {
		return "", fmt.Errorf("tlsconf: parse distinguished name: %w", err)
	}
	if len(rest) != 0 {
		return "", fmt.Errorf("tlsconf: parse distinguished name: trailing data")
	}
	var b strings.Builder
	for i := len(seq) - 1; i >= 0; i-- {
		if i != len(seq)-1 {
			b.WriteByte(',')
		}
		// OpenSSL reverses its flat list of attributes, so the members of
		// a multi-valued RDN come out in reverse order too.
		for j := len(seq[i]) - 1; j >= 0; j-- {
			atv := seq[i][j]
			if j != len(seq[i])-1 {
				b.WriteByte('+')
			}
			oid := atv.Type.String()
			name, known := shortNames[oid]
			if !known {
				name = oid
			}
			b.WriteString(name)
			b.WriteByte('=')
			text, ok := stringValue(atv.Value)
			if !known || !ok {
				writeHexDump(&b, atv.Value.FullBytes)
				continue
			}
			writeEscaped2253(&b, text)
		}
	}
	return b.String(), nil
}

// stringValue returns the UTF-8 bytes of an ASN.1 string value as OpenSSL
// converts them, or false when the value is not a string type.
func stringValue(v asn1.RawValue) ([]byte, bool) {
	if v.Class != asn1.ClassUniversal || v.IsCompound {
		return nil, false
	}
	switch v.Tag {
	case asn1.TagUTF8String:
		// OpenSSL copies UTF8String bytes through unchanged.
		return v.Bytes, true
	case asn1.TagNumericString, asn1.TagPrintableString, asn1.TagT61String, asn1.TagIA5String,
		asn1.TagUTCTime, asn1.TagGeneralizedTime, 26 /* VisibleString */ :
		// One byte per character, read as Latin-1.
		out := make([]byte, 0, len(v.Bytes))
		for _, c := range v.Bytes {
			out = utf8.AppendRune(out, rune(c))
		}
		return out, true
	case asn1.TagBMPString:
		if len(v.Bytes)%2 != 0 {
			return nil, false
		}
		u := make([]uint16, len(v.Bytes)/2)
		for i := range u {
			u[i] = binary.BigEndian.Uint16(v.Bytes[2*i:])
		}
		var out []byte
		for _, r := range utf16.Decode(u) {
			out = utf8.AppendRune(out, r)
		}
		return out, true
	case 28: // UniversalString
		if len(v.Bytes)%4 != 0 {
			return nil, false
		}
		var out []byte
		for i := 0; i < len(v.Bytes); i += 4 {
			r := rune(binary.BigEndian.Uint32(v.Bytes[i:]))
			if !utf8.ValidRune(r) {
				return nil, false
			}
			out = utf8.AppendRune(out, r)
		}
		return out, true
	}
	return nil, false
}

const hexUpper = "0123456789ABCDEF"

func writeHexDump(b *strings.Builder, der []byte) {
	b.WriteByte('#')
	for _, c := range der {
		b.WriteByte(hexUpper[c>>4])
		b.WriteByte(hexUpper[c&0xf])
	}
}

// writeEscaped2253 escapes as OpenSSL's ASN1_STRFLGS_RFC2253 does.
func writeEscaped2253(b *strings.Builder, s []byte) {
	for i, c := range s {
		switch {
		case c > 0x7f || c < 0x20 || c == 0x7f:
			b.WriteByte('\\')
			b.WriteByte(hexUpper[c>>4])
			b.WriteByte(hexUpper[c&0xf])
		case strings.IndexByte(`,+"\<>;`, c) >= 0,
			c == '#' && i == 0,
			c == ' ' && (i == 0 || i == len(s)-1):
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
}
