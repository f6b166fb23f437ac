//===- ArtifactSignature.cpp - detached Ed25519 signatures of artifacts -----===//
#include "ArtifactSignature.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace moec::signature {
namespace {

struct KeyFree {
  void operator()(EVP_PKEY *k) const { EVP_PKEY_free(k); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;
struct ContextFree {
  void operator()(EVP_MD_CTX *c) const { EVP_MD_CTX_free(c); }
};
using Context = std::unique_ptr<EVP_MD_CTX, ContextFree>;

/// OpenSSL's first queued error as text (" (...)"), or "" when it queued none; the queue is emptied.
std::string opensslError() {
  unsigned long first = ERR_get_error();
  ERR_clear_error();
  if (!first)
    return "";
  char text[256];
  ERR_error_string_n(first, text, sizeof text);
  return std::string(" (") + text + ")";
}

/// A file's bytes, mapped read-only (an empty file maps nothing).
class MappedFile {
public:
  bool open(const std::string &path, std::string &error) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      error = path + ": cannot read: " + std::strerror(errno);
      return false;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      error = path + ": not a regular file";
      ::close(fd);
      return false;
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_) {
      void *p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        error = path + ": cannot map: " + std::strerror(errno);
        ::close(fd);
        return false;
      }
      data_ = static_cast<const unsigned char *>(p);
      madvise(p, size_, MADV_SEQUENTIAL); // read once, front to back
    }
    ::close(fd);
    return true;
  }
  ~MappedFile() {
    if (data_)
      munmap(const_cast<unsigned char *>(data_), size_);
  }
  const unsigned char *data() const { return data_ ? data_ : reinterpret_cast<const unsigned char *>(""); }
  size_t size() const { return size_; }

private:
  const unsigned char *data_ = nullptr;
  size_t size_ = 0;
};

/// Refuses a PEM passphrase prompt: keys are read unencrypted (a prompt would hang a build).
int noPassphrase(char *, int, int, void *) { return -1; }

const char *kMakeKey = "openssl genpkey -algorithm ed25519 -out KEY.pem";

/// Reads a PEM key (private or public) and checks it signs in one shot over raw bytes: Ed25519 or Ed448.
Key readKey(const std::string &path, bool isPrivate, std::string &error) {
  FILE *f = std::fopen(path.c_str(), "r");
  if (!f) {
    error = path + ": cannot read the key: " + std::strerror(errno);
    return nullptr;
  }
  Key key(isPrivate ? PEM_read_PrivateKey(f, nullptr, noPassphrase, nullptr)
                    : PEM_read_PUBKEY(f, nullptr, nullptr, nullptr));
  std::fclose(f);
  if (!key) {
    error =
        path + (isPrivate ? ": not an unencrypted PEM private key (" + std::string(kMakeKey) + " makes one)"
                          : ": not a PEM public key (openssl pkey -in KEY.pem -pubout -out KEY.pub.pem "
                            "writes the public half of a private key)");
    ERR_clear_error();
    return nullptr;
  }
  int id = EVP_PKEY_get_base_id(key.get());
  if (id != EVP_PKEY_ED25519 && id != EVP_PKEY_ED448) {
    const char *name = EVP_PKEY_get0_type_name(key.get());
    error = path + ": an " + (name ? name : "unknown") + " key; artifact signatures are Ed25519 or Ed448 (" +
            kMakeKey + ")";
    return nullptr;
  }
  return key;
}

} // namespace

std::string defaultPath(const std::string &artifact) { return artifact + ".sig"; }

struct SigningKey::Impl {
  Key key;
};

SigningKey::SigningKey(std::unique_ptr<Impl> impl) : impl(std::move(impl)) {}
SigningKey::~SigningKey() = default;

std::unique_ptr<SigningKey> SigningKey::load(const std::string &path, std::string &error) {
  Key key = readKey(path, /*isPrivate=*/true, error);
  if (!key)
    return nullptr;
  return std::unique_ptr<SigningKey>(new SigningKey(std::make_unique<Impl>(Impl{std::move(key)})));
}

bool SigningKey::sign(const std::string &file, const std::string &signaturePath, std::string &error) const {
  MappedFile bytes;
  if (!bytes.open(file, error))
    return false;
  Context ctx(EVP_MD_CTX_new());
  size_t length = 0;
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, impl->key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &length, bytes.data(), bytes.size()) != 1) {
    error = file + ": cannot sign" + opensslError();
    return false;
  }
  std::vector<unsigned char> signature(length);
  if (EVP_DigestSign(ctx.get(), signature.data(), &length, bytes.data(), bytes.size()) != 1) {
    error = file + ": cannot sign" + opensslError();
    return false;
  }
  // Written beside its final path and renamed: a signature file is whole or absent.
  const std::string partial = signaturePath + ".partial." + std::to_string(getpid());
  FILE *out = std::fopen(partial.c_str(), "wb");
  bool ok = out && std::fwrite(signature.data(), 1, length, out) == length;
  ok = out && std::fclose(out) == 0 && ok;
  if (!ok || std::rename(partial.c_str(), signaturePath.c_str()) != 0) {
    error = signaturePath + ": cannot write the signature: " + std::strerror(errno);
    std::remove(partial.c_str());
    return false;
  }
  return true;
}

bool verify(const std::string &file, const std::string &publicKeyPath, const std::string &signaturePath,
            std::string &error) {
  Key key = readKey(publicKeyPath, /*isPrivate=*/false, error);
  if (!key)
    return false;
  std::vector<unsigned char> signature(1024); // Ed448's are 114 bytes: anything near this size is not one
  FILE *f = std::fopen(signaturePath.c_str(), "rb");
  if (!f) {
    error = signaturePath + ": cannot read the signature: " + std::strerror(errno) +
            " (moec compile --sign-key KEY.pem writes one beside the artifact)";
    return false;
  }
  size_t length = std::fread(signature.data(), 1, signature.size(), f);
  std::fclose(f);
  MappedFile bytes;
  if (!bytes.open(file, error))
    return false;
  Context ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1) {
    error = publicKeyPath + ": cannot verify with this key" + opensslError();
    return false;
  }
  int result = EVP_DigestVerify(ctx.get(), signature.data(), length, bytes.data(), bytes.size());
  ERR_clear_error();
  if (result != 1) {
    error = file + ": the signature " + signaturePath + " does not match it and the public key " +
            publicKeyPath + " (the file changed after it was signed, or another key signed it)";
    return false;
  }
  return true;
}

} // namespace moec::signature
