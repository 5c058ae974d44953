package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
)

const estargzLibrary = "github.com/containerd/stargz-snapshotter/estargz"

// maxChunkBytes bounds the buffer one chunk is read into; the reference reader decompresses a
// chunk from its start on every ReadAt, so a chunk is read with a single call.
const maxChunkBytes = 1 << 30

// isEstargzMetadata reports the entries the eStargz format adds on top of the layer's files.
func isEstargzMetadata(name string) bool {
	switch name {
	case estargz.TOCTarName, estargz.PrefetchLandmark, estargz.NoPrefetchLandmark:
		return true
	}
	return false
}

// checkEstargz verifies an eStargz blob the way stargz-snapshotter does before serving it lazily
// (TOC digest, then every chunk against its TOC digest through the chunk verifier), and also
// checks that the blob is a valid gzip stream of a tar whose entries equal the TOC's view, so a
// full pull and a lazy pull see the same files.
func checkEstargz(blobPath, tocDigestText string, expectedUncompressedSize int64) Result {
	result := Result{Format: "estargz", Library: estargzLibrary}
	expectedTOCDigest, err := digest.Parse(tocDigestText)
	if err != nil {
		return failed(result, fmt.Errorf("invalid --toc-digest: %w", err))
	}
	file, blob, err := openSection(blobPath)
	if err != nil {
		return failed(result, err)
	}
	defer file.Close()

	reader, err := estargz.Open(blob)
	if err != nil {
		return failed(result, fmt.Errorf("estargz.Open: %w", err))
	}
	result.TOCDigest = reader.TOCDigest().String()
	verifier, err := reader.VerifyTOC(expectedTOCDigest)
	if err != nil {
		return failed(result, fmt.Errorf("VerifyTOC: %w", err))
	}
	result.Checks = append(result.Checks, "estargz.Open parsed footer and TOC", "VerifyTOC: TOC JSON digest matches")

	readerTree, filesVerified, chunksVerified, err := walkEstargz(reader, verifier)
	result.FilesVerified, result.ChunksVerified = intPtr(filesVerified), intPtr(chunksVerified)
	if err != nil {
		return failed(result, err)
	}
	result.Checks = append(result.Checks,
		"every chunk of every regular file read through the reader and accepted by its chunk verifier",
		"every regular file's content matches its TOC digest")

	streamTree, diffID, size, err := decompressGzipTar(blob)
	if err != nil {
		return failed(result, err)
	}
	result.DiffID, result.UncompressedSize = diffID.String(), int64Ptr(size)
	result.Checks = append(result.Checks, "whole blob is a valid multi-member gzip stream of a tar")
	if expectedUncompressedSize >= 0 {
		if size != expectedUncompressedSize {
			return failed(result, fmt.Errorf("uncompressed size annotation says %d but the blob decompresses to %d bytes",
				expectedUncompressedSize, size))
		}
		result.Checks = append(result.Checks, "uncompressed size equals the decompressed blob size")
	}

	// The reader invents parent directories missing from the archive; those are reported apart
	// so that "tree" lists exactly the archive's entries.
	inStream := map[string]bool{}
	for _, e := range streamTree {
		inStream[e.Name] = true
	}
	for _, e := range readerTree {
		if e.Type == "dir" && !inStream[e.Name] {
			result.ImplicitDirs = append(result.ImplicitDirs, e.Name)
		} else {
			result.Tree = append(result.Tree, e)
		}
	}
	if difference := diffTrees("TOC", result.Tree, "tar stream", streamTree); difference != "" {
		return failed(result, fmt.Errorf("TOC view differs from the tar stream inside the blob: %s", difference))
	}
	result.Checks = append(result.Checks, "TOC view of the files equals the tar stream inside the blob")
	result.OK = true
	return result
}

// walkEstargz lists the tree as the reference reader exposes it (from the root entry through its
// children) and verifies the content of every regular file chunk by chunk.
func walkEstargz(reader *estargz.Reader, verifier estargz.TOCEntryVerifier) ([]TreeEntry, int, int, error) {
	root, ok := reader.Lookup("")
	if !ok {
		return nil, 0, 0, errors.New("reader has no root entry")
	}
	var tree []TreeEntry
	filesVerified, chunksVerified := 0, 0
	tree = append(tree, estargzTreeEntry(".", root))

	var walk func(dirPath string, dir *estargz.TOCEntry) error
	walk = func(dirPath string, dir *estargz.TOCEntry) error {
		children := map[string]*estargz.TOCEntry{}
		dir.ForeachChild(func(baseName string, child *estargz.TOCEntry) bool {
			children[baseName] = child
			return true
		})
		for _, baseName := range slices.Sorted(maps.Keys(children)) {
			child := children[baseName]
			childPath := path.Join(dirPath, baseName)
			if dirPath == "" && isEstargzMetadata(baseName) {
				continue
			}
			// The reader links a hard link's name to its target's entry, so a child whose own
			// name differs from the path it was reached by is a hard link.
			if child.Name != childPath {
				tree = append(tree, newTreeEntry(entryAttributes{name: childPath, typ: "hardlink", linkname: child.Name}))
				continue
			}
			tree = append(tree, estargzTreeEntry(childPath, child))
			switch child.Type {
			case "dir":
				if err := walk(childPath, child); err != nil {
					return err
				}
			case "reg":
				sum, chunks, err := verifyEstargzFile(reader, verifier, child)
				if err != nil {
					return err
				}
				tree[len(tree)-1].Sha256 = &sum
				filesVerified++
				chunksVerified += chunks
			}
		}
		return nil
	}
	if err := walk("", root); err != nil {
		return nil, filesVerified, chunksVerified, err
	}
	return sortedTree(tree), filesVerified, chunksVerified, nil
}

func estargzTreeEntry(name string, e *estargz.TOCEntry) TreeEntry {
	xattrs := map[string]string{}
	for key, value := range e.Xattrs {
		xattrs[key] = base64.StdEncoding.EncodeToString(value)
	}
	return newTreeEntry(entryAttributes{
		name: name, typ: e.Type, linkname: e.LinkName, mode: e.Mode,
		uid: e.UID, gid: e.GID, uname: e.Uname, gname: e.Gname, size: e.Size,
		devmajor: int64(e.DevMajor), devminor: int64(e.DevMinor), xattrsBase64: xattrs,
	})
}

// verifyEstargzFile reads every chunk of a regular file through the reader and checks it with the
// TOC's chunk verifier, as the lazy-pull filesystem does; it returns the hex sha256 of the content.
func verifyEstargzFile(reader *estargz.Reader, verifier estargz.TOCEntryVerifier, file *estargz.TOCEntry) (string, int, error) {
	content, err := reader.OpenFile(file.Name)
	if err != nil {
		return "", 0, fmt.Errorf("OpenFile %q: %w", file.Name, err)
	}
	hasher := sha256.New()
	chunks := 0
	for offset := int64(0); offset < file.Size; {
		chunk, ok := reader.ChunkEntryForOffset(file.Name, offset)
		if !ok {
			return "", chunks, fmt.Errorf("%q: no chunk covers offset %d", file.Name, offset)
		}
		if chunk.ChunkOffset != offset || chunk.ChunkSize <= 0 || chunk.ChunkSize > maxChunkBytes {
			return "", chunks, fmt.Errorf("%q: bad chunk at offset %d (chunkOffset %d, chunkSize %d)",
				file.Name, offset, chunk.ChunkOffset, chunk.ChunkSize)
		}
		chunkVerifier, err := verifier.Verifier(chunk)
		if err != nil {
			return "", chunks, fmt.Errorf("%q: chunk at offset %d: %w", file.Name, offset, err)
		}
		data := make([]byte, chunk.ChunkSize)
		if _, err := content.ReadAt(data, chunk.ChunkOffset); err != nil && !(errors.Is(err, io.EOF) && offset+chunk.ChunkSize == file.Size) {
			return "", chunks, fmt.Errorf("%q: reading chunk at offset %d: %w", file.Name, offset, err)
		}
		_, _ = chunkVerifier.Write(data)
		if !chunkVerifier.Verified() {
			return "", chunks, fmt.Errorf("%q: chunk at offset %d (%d bytes) does not match its TOC chunk digest",
				file.Name, offset, chunk.ChunkSize)
		}
		hasher.Write(data)
		chunks++
		offset += chunk.ChunkSize
	}
	sum := hex.EncodeToString(hasher.Sum(nil))
	if file.Digest != "" {
		if expected, err := digest.Parse(file.Digest); err != nil || expected.Encoded() != sum {
			return "", chunks, fmt.Errorf("%q: content sha256:%s does not match TOC digest %q", file.Name, sum, file.Digest)
		}
	}
	return sum, chunks, nil
}

// decompressGzipTar decompresses the whole blob (all gzip members) and returns the tree of the tar
// inside (without the eStargz metadata entries), its digest and size.
func decompressGzipTar(blob *io.SectionReader) ([]TreeEntry, digest.Digest, int64, error) {
	gz, err := gzip.NewReader(io.NewSectionReader(blob, 0, blob.Size()))
	if err != nil {
		return nil, "", 0, fmt.Errorf("blob is not gzip: %w", err)
	}
	defer gz.Close()
	return digestedTarTree(gz, tarTreeOptions{skip: isEstargzMetadata, inheritOwnerNames: true})
}

// digestedTarTree reads a decompressed tar stream once, computing its tree, digest and size.
func digestedTarTree(stream io.Reader, options tarTreeOptions) ([]TreeEntry, digest.Digest, int64, error) {
	digester := digest.Canonical.Digester()
	counter := &countingWriter{}
	tree, err := treeFromTar(io.TeeReader(stream, io.MultiWriter(digester.Hash(), counter)), options)
	if err != nil {
		return nil, "", counter.n, fmt.Errorf("decompressed blob: %w", err)
	}
	return tree, digester.Digest(), counter.n, nil
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
