#!/usr/bin/env python3
"""Artifact signatures (docs/artifact-format.md, "Trust model"): `moec compile --sign-key KEY.pem` writes
OUT.moex.sig, and `moert run|inspect|verify|generate --public-key KEY.pub.pem` loads the artifact only if that
signature matches.

OpenSSL's command line is the independent reference: a signature moec writes must verify with
`openssl pkeyutl -verify -rawin`, and one `openssl pkeyutl -sign -rawin` writes must verify with moert. Every
way the pair can be wrong (a changed, truncated or extended file; another key; a missing, empty or garbage
signature; an unsigned artifact under $MOERT_PUBLIC_KEY; a key of the wrong type, encrypted, missing, or a
private key given as the public one) must be one `moert: error:`/`moec: error:` line and exit 1, and a compile
that cannot sign leaves neither artifact nor signature behind.

    check_signatures.py --moec build/bin/moec --moert build/bin/moert
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_bad_artifacts import tiny_model  # noqa: E402

failures = []


def run(cmd, env=None):
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def expect_ok(what, p):
    if p.returncode != 0:
        failures.append(f"{what}: exit {p.returncode}, expected 0: {p.stderr.strip()[-400:]}")
    else:
        print(f"ok   {what}")


def expect_error(what, p, tool, needle):
    """One error line from `tool`, containing `needle`, and exit 1."""
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith(f"{tool}: error:")]
    if p.returncode != 1 or len(errors) != 1 or needle not in errors[0] or "Traceback" in p.stderr:
        failures.append(f"{what}: exit {p.returncode}, stderr {p.stderr.strip()[-400:]!r}; expected one "
                        f"'{tool}: error:' line with {needle!r}")
    else:
        print(f"ok   {what}: {errors[0]}")


def openssl(*args):
    p = run(["openssl", *args])
    if p.returncode != 0:
        sys.exit(f"openssl {' '.join(args)} failed: {p.stderr}")
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    args = ap.parse_args()
    moec, moert = args.moec, args.moert

    with tempfile.TemporaryDirectory() as d:
        j = lambda *p: os.path.join(d, *p)  # noqa: E731
        tiny_model(j("m.onnx"))
        np.save(j("x.npy"), np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32))
        np.save(j("ids.npy"), np.array([1, 2, 3], dtype=np.int64))
        for name, alg in (("k", "ed25519"), ("other", "ed25519"), ("k448", "ed448")):
            openssl("genpkey", "-algorithm", alg, "-out", j(f"{name}.pem"))
            openssl("pkey", "-in", j(f"{name}.pem"), "-pubout", "-out", j(f"{name}.pub.pem"))
        openssl("genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:1024", "-out", j("rsa.pem"))
        openssl("genpkey", "-algorithm", "ed25519", "-aes-128-cbc", "-pass", "pass:secret", "-out", j("enc.pem"))
        compile_args = [moec, "compile", j("m.onnx"), "--quiet"]

        # moec signs; OpenSSL and moert both accept the signature.
        expect_ok("moec compile --sign-key (Ed25519)",
                  run(compile_args + ["-o", j("m.moex"), "--sign-key", j("k.pem")]))
        if not os.path.isfile(j("m.moex.sig")):
            sys.exit("FAIL moec --sign-key wrote no m.moex.sig")
        expect_ok("openssl pkeyutl -verify accepts moec's signature",
                  run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", j("k.pub.pem"), "-rawin",
                       "-in", j("m.moex"), "-sigfile", j("m.moex.sig")]))
        pk = ["--public-key", j("k.pub.pem")]
        p = run([moert, "verify", j("m.moex")] + pk)
        expect_ok("moert verify --public-key", p)
        if "signed by" not in p.stdout:
            failures.append(f"moert verify --public-key printed no signature line: {p.stdout!r}")
        expect_ok("moert inspect --public-key", run([moert, "inspect", j("m.moex")] + pk))
        out_signed, out_plain = j("out-signed"), j("out-plain")
        os.makedirs(out_signed), os.makedirs(out_plain)
        expect_ok("moert run --public-key", run([moert, "run", j("m.moex"), "--input", "x=" + j("x.npy"),
                                                 "--output-dir", out_signed, f"--public-key={j('k.pub.pem')}"]))
        expect_ok("moert run (no key)", run([moert, "run", j("m.moex"), "--input", "x=" + j("x.npy"),
                                             "--output-dir", out_plain]))
        if not np.array_equal(np.load(j("out-signed", "y.npy")), np.load(j("out-plain", "y.npy"))):
            failures.append("moert run --public-key gave other outputs than without it")
        env = dict(os.environ, MOERT_PUBLIC_KEY=j("k.pub.pem"))
        expect_ok("$MOERT_PUBLIC_KEY with a signed artifact", run([moert, "inspect", j("m.moex")], env=env))

        # OpenSSL signs; moert accepts it (an explicit --signature path), and an Ed448 key through moec.
        openssl("pkeyutl", "-sign", "-inkey", j("k.pem"), "-rawin", "-in", j("m.moex"), "-out", j("openssl.sig"))
        expect_ok("moert accepts openssl pkeyutl -sign's signature",
                  run([moert, "verify", j("m.moex"), "--signature", j("openssl.sig")] + pk))
        expect_ok("moec compile --sign-key (Ed448)",
                  run(compile_args + ["-o", j("m448.moex"), "--sign-key", j("k448.pem")]))
        expect_ok("moert verify, Ed448", run([moert, "verify", j("m448.moex"), "--public-key", j("k448.pub.pem")]))

        # Every way the file, signature or key can be wrong.
        image = open(j("m.moex"), "rb").read()
        sig = open(j("m.moex.sig"), "rb").read()
        damaged = {
            "a byte of the header changed": image[:9] + bytes([image[9] ^ 1]) + image[10:],
            "the last byte changed": image[:-1] + bytes([image[-1] ^ 0x80]),
            "a byte appended": image + b"\0",
            "the last 64 bytes cut": image[:-64],
        }
        for what, data in damaged.items():
            open(j("bad.moex"), "wb").write(data)
            open(j("bad.moex.sig"), "wb").write(sig)
            for cmd in ("inspect", "verify"):
                expect_error(f"{cmd}: {what}", run([moert, cmd, j("bad.moex")] + pk), "moert", "does not match")
        open(j("bad.moex"), "wb").write(damaged["the last byte changed"])
        expect_error("run: the last byte changed",
                     run([moert, "run", j("bad.moex"), "--input", "x=" + j("x.npy"), "--output-dir", d] + pk),
                     "moert", "does not match")
        expect_error("generate: the last byte changed",
                     run([moert, "generate", j("bad.moex"), "--prompt-ids", j("ids.npy")] + pk), "moert",
                     "does not match")
        expect_error("another key's public half", run([moert, "inspect", j("m.moex"), "--public-key",
                                                       j("other.pub.pem")]), "moert", "does not match")
        expect_error("an Ed448 key for an Ed25519 signature",
                     run([moert, "inspect", j("m.moex"), "--public-key", j("k448.pub.pem")]), "moert",
                     "does not match")
        for what, data in (("an empty signature", b""), ("a garbage signature", os.urandom(64)),
                           ("a signature of 2000 bytes", sig * 32)):
            open(j("s.sig"), "wb").write(data)
            expect_error(what, run([moert, "inspect", j("m.moex"), "--signature", j("s.sig")] + pk), "moert",
                         "does not match")
        open(j("unsigned.moex"), "wb").write(image)
        expect_error("no signature file", run([moert, "inspect", j("unsigned.moex")] + pk), "moert",
                     "cannot read the signature")
        expect_error("$MOERT_PUBLIC_KEY with an unsigned artifact", run([moert, "inspect", j("unsigned.moex")],
                                                                        env=env), "moert", "cannot read the signature")
        expect_error("a private key given as the public key",
                     run([moert, "inspect", j("m.moex"), "--public-key", j("k.pem")]), "moert", "not a PEM public key")
        expect_error("a missing public key file",
                     run([moert, "inspect", j("m.moex"), "--public-key", j("nope.pem")]), "moert", "cannot read the key")
        expect_error("--signature without --public-key",
                     run([moert, "inspect", j("m.moex"), "--signature", j("m.moex.sig")]), "moert",
                     "needs --public-key")
        expect_error("--public-key without a value", run([moert, "inspect", j("m.moex"), "--public-key"]), "moert",
                     "needs a value")

        # Keys moec cannot sign with: an error before compiling, nothing written.
        for what, key, needle in (("an RSA key", "rsa.pem", "an RSA key"),
                                  ("an encrypted key", "enc.pem", "not an unencrypted PEM private key"),
                                  ("a public key", "k.pub.pem", "not an unencrypted PEM private key"),
                                  ("a missing key", "nope.pem", "cannot read the key")):
            expect_error(f"moec --sign-key {what}",
                         run(compile_args + ["-o", j("u.moex"), "--sign-key", j(key)]), "moec", needle)
        expect_error("moec --sign-key with --emit=mlir",
                     run(compile_args + ["--emit=mlir", "-o", j("u.mlir"), "--sign-key", j("k.pem")]), "moec",
                     "--sign-key signs artifacts")
        # The signature cannot be written (a directory where it goes): the artifact is removed too.
        os.makedirs(j("u.moex.sig"))
        expect_error("moec --sign-key, signature not writable",
                     run(compile_args + ["-o", j("u.moex"), "--sign-key", j("k.pem")]), "moec",
                     "cannot write the signature")
        left = sorted(f for f in os.listdir(d) if f.startswith("u.") and f != "u.moex.sig")
        if left:
            failures.append(f"failed signing compiles left files behind: {left}")

    if failures:
        print("\n".join("FAIL " + f for f in failures))
        return 1
    print("all signature checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
