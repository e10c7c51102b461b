#!/usr/bin/env python3
"""Regenerate the committed seed corpus under fuzz/corpus/ (python3 + openssl).

The seeds are real-shaped inputs: Coder's JSON answers (as Go's encoder
writes them), an AWS identity document, a GCE identity JWT and Azure
attested-document PKCS#7 SignedData (one built by hand, one by openssl)."""
import base64, json, os, struct, subprocess, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def go_json(obj):
    # Go's encoding/json: compact, HTML-escaped, trailing newline.
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n").encode()

# Content-type index in fuzz_targets/classify.rs: 1 = application/json, 2 = ...; charset=utf-8, 3 = text/html.
def answer(status, ct, body):
    return struct.pack(">HB", status, ct) + body

MULTI = 'Multiple agents found with instance ID "i-0abc123def4567890". Set CODER_AGENT_NAME to one of: dev, main, gpu-box'
coder = {
    "200_token": answer(200, 2, go_json({"session_token": "8f0e1c2d-7a3b-4c5d-9e6f-0a1b2c3d4e5f"})),
    "200_empty_token": answer(200, 2, go_json({"session_token": ""})),
    "200_html": answer(200, 3, b"<!doctype html><html><head><title>Sign in</title></head><body>login</body></html>"),
    "409_multiple": answer(409, 2, go_json({"message": MULTI})),
    "409_structured": answer(409, 1, go_json({"message": "Multiple agents", "agent_names": ["b", "a", "a"]})),
    "404_instance": answer(404, 2, go_json({"message": 'Instance with id "i-0abc123def4567890" not found.'})),
    "404_no_agent": answer(404, 2, go_json({"message": 'No agent found with instance ID "i-1" and name "x".'})),
    "400_not_latest": answer(400, 2, go_json({"message": 'Resource found for id "i-1", but isn\'t registered on the latest history.'})),
    "400_validation": answer(400, 2, go_json({"message": "Validation failed.", "validations": [{"field": "signature", "detail": "Validation failed for tag \"required\" with value: \"\""}]})),
    "401_bad_sig": answer(401, 2, go_json({"message": "Invalid AWS identity.", "detail": "verify signature: crypto/rsa: verification error"})),
    "502_proxy": answer(502, 3, b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\r\n"),
    "302_redirect": answer(302, 0, b""),
}
for k, v in coder.items():
    put("classify", k, v)

names = {
    "message": MULTI,
    "message_trailing_dot": "Set CODER_AGENT_NAME to one of: a, b.",
    "message_odd": "one of: main,, --x, a--b, -lead, trail-, ok-1 , UPPER, main",
    "body_409": go_json({"message": MULTI}),
    "body_structured": go_json({"message": "x one of: z", "agents": [" web ", "db", "db", "bad name"]}),
    "body_candidates_empty": go_json({"message": "one of: a, b", "candidates": []}),
}
for k, v in names.items():
    put("names_409", k, v)

doc = """{
  "accountId" : "123456789012",
  "architecture" : "x86_64",
  "availabilityZone" : "us-east-1a",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : "ami-0abcdef1234567890",
  "instanceId" : "i-0abc123def4567890",
  "instanceType" : "t3.micro",
  "kernelId" : null,
  "pendingTime" : "2026-11-29T10:00:00Z",
  "privateIp" : "10.0.1.23",
  "ramdiskId" : null,
  "region" : "us-east-1",
  "version" : "2017-09-30"
}"""
put("aws_document", "real", doc)
put("aws_document", "minimal", '{"instanceId":"i-1","region":null}')
put("identity_summary", "aws", b"\x00" + doc.encode() + b"\xff" + b"dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZQ==")

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

header = {"alg": "RS256", "kid": "6f7254101f56e41cf35c9926de84a2d552b4c6f1", "typ": "JWT"}
claims = {
    "aud": "https://coder.example.com", "azp": "112233445566778899001", "email": "vm@project.iam.gserviceaccount.com",
    "email_verified": True, "exp": 1795000000, "iat": 1794996400, "iss": "https://accounts.google.com",
    "sub": "112233445566778899001",
    "google": {"compute_engine": {"instance_creation_timestamp": 1794990000, "instance_id": "4507150416398120000",
               "instance_name": "coder-dev-main", "project_id": "my-project", "project_number": 123456789012,
               "zone": "us-central1-a"}},
}
claims_json = json.dumps(claims, separators=(",", ":")).encode()
jwt = f"{b64u(json.dumps(header, separators=(',', ':')).encode())}.{b64u(claims_json)}.{b64u(bytes(range(64)))}"
put("jwt_claims", "jwt", b"\x00" + jwt.encode())
put("jwt_claims", "claims", b"\x01" + claims_json)
put("jwt_claims", "not_a_jwt", b"\x00" + b"a.b")
put("identity_summary", "gcp", b"\x01" + jwt.encode())

def tlv(tag, content):
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    nb = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(nb)]) + nb + content

OID_SD = tlv(0x06, bytes([0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02]))
OID_DATA = tlv(0x06, bytes([0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01]))

def signed_data(octets):
    encap = tlv(0x30, OID_DATA + tlv(0xa0, octets))
    sd = tlv(0x30, tlv(0x02, b"\x01") + tlv(0x31, b"") + encap + tlv(0x31, b""))
    return tlv(0x30, OID_SD + tlv(0xa0, sd))

azure_json = json.dumps({
    "licenseType": "", "nonce": "20261129-100000",
    "plan": {"name": "", "product": "", "publisher": ""}, "sku": "22_04-lts-gen2",
    "subscriptionId": "8d10da13-8125-4ba9-a717-bf7490507b3d",
    "timeStamp": {"createdOn": "11/29/26 10:00:00 -0000", "expiresOn": "11/29/26 16:00:00 -0000"},
    "vmId": "13f56399-bd52-4150-9748-7190aae1ff21",
}, separators=(",", ":")).encode()
small = signed_data(tlv(0x04, azure_json))
ber = signed_data(tlv(0x24, b"".join(tlv(0x04, azure_json[i:i + 100]) for i in range(0, len(azure_json), 100))))
put("azure_pkcs7", "der_small", b"\x00" + small)
put("azure_pkcs7", "der_ber_chunks", b"\x00" + ber)
put("azure_pkcs7", "b64_small", b"\x01" + base64.b64encode(small))
put("azure_pkcs7", "content", b"\x02" + azure_json)
put("identity_summary", "azure_b64", b"\x02" + base64.b64encode(small))
put("identity_summary", "azure_content", b"\x03" + azure_json)

# A real SignedData with a certificate and signer info, as openssl makes it.
with tempfile.TemporaryDirectory() as t:
    key, crt, inp, out = (os.path.join(t, n) for n in ("k.pem", "c.pem", "in.json", "out.der"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "1", "-subj", "/CN=metadata.azure.com"],
                   check=True, capture_output=True)
    open(inp, "wb").write(azure_json)
    subprocess.run(["openssl", "smime", "-sign", "-binary", "-nodetach", "-in", inp, "-signer", crt,
                    "-inkey", key, "-outform", "DER", "-out", out], check=True, capture_output=True)
    real = open(out, "rb").read()
put("azure_pkcs7", "der_openssl", b"\x00" + real)
put("azure_pkcs7", "b64_openssl_wrapped", b"\x01" + b"\n".join(base64.encodebytes(real).split(b"\n")))
put("identity_summary", "azure_openssl", b"\x02" + base64.b64encode(real))
