//===- ArtifactSignature.h - detached Ed25519 signatures of artifacts -------===//
//
// An artifact carries native code, so loading one runs it (docs/artifact-format.md, "Trust model"). These
// signatures say who produced a file: `moec compile --sign-key KEY.pem` writes OUT.moex.sig, and
// `moert ... --public-key KEY.pub.pem` checks it before loading anything from the file.
//
// A signature is pure Ed25519 (or Ed448, by the key) over the file's bytes, exactly what
// `openssl pkeyutl -sign -rawin` makes and `openssl pkeyutl -verify -rawin` checks, so either side can be
// OpenSSL's command line. The file is mapped, not read into memory. OpenSSL's libcrypto does the
// cryptography; the moec and moert tools link it, libmoert does not.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <memory>
#include <string>

namespace moec::signature {

/// Where a signature of `artifact` is looked for and written when no path is given: `<artifact>.sig`.
std::string defaultPath(const std::string &artifact);

/// A private key to sign with, read once (before a long compile, so a bad key fails first).
class SigningKey {
public:
  /// Reads an unencrypted PEM private key (Ed25519 or Ed448). Null and `error` set ("PATH: ...") if not.
  static std::unique_ptr<SigningKey> load(const std::string &path, std::string &error);
  ~SigningKey();
  SigningKey(const SigningKey &) = delete;
  SigningKey &operator=(const SigningKey &) = delete;

  /// Signs the bytes of the file at `file`, and writes the signature to `signaturePath` (whole or not at
  /// all: written beside it, then renamed). False and `error` set on failure.
  bool sign(const std::string &file, const std::string &signaturePath, std::string &error) const;

private:
  struct Impl;
  explicit SigningKey(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl;
};

/// Checks that `signaturePath` holds a signature of the bytes of `file` by the private half of the PEM public
/// key at `publicKeyPath`. True if so; else false and one line in `error` saying which of the three is wrong.
bool verify(const std::string &file, const std::string &publicKeyPath, const std::string &signaturePath,
            std::string &error);

} // namespace moec::signature
