// Command accel-conformance checks converted layers with the formats' own reference code and
// produces golden blobs with the reference writers.
//
// Every subcommand prints exactly one JSON object on stdout and exits 0 when it could run; the
// verdict is in the object ({"ok": true|false, "error": "...", ...}). The exit status is non-zero
// only for usage errors (unknown subcommand, missing or malformed flags).
//
//	accel-conformance estargz --blob FILE --toc-digest sha256:... [--uncompressed-size N]
//	accel-conformance zstdchunked --blob FILE --annotations JSON_FILE [--diff-id sha256:...] [--lazy-file NAME]
//	accel-conformance gen-estargz --tar FILE --out FILE [--chunk-size N] [--workers N]
//	accel-conformance gen-zstdchunked --tar FILE --out FILE [--level N]
//	accel-conformance tar-tree --tar FILE [--estargz-owner-names]
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// Result is the single JSON object a subcommand prints. Fields that do not apply are omitted.
type Result struct {
	OK               bool              `json:"ok"`
	Error            string            `json:"error,omitempty"`
	Format           string            `json:"format,omitempty"`
	Library          string            `json:"library,omitempty"`
	Tree             []TreeEntry       `json:"tree,omitempty"`
	ImplicitDirs     []string          `json:"implicit_dirs,omitempty"`
	Annotations      map[string]string `json:"annotations,omitempty"`
	Digest           string            `json:"digest,omitempty"`
	Size             *int64            `json:"size,omitempty"`
	DiffID           string            `json:"diff_id,omitempty"`
	UncompressedSize *int64            `json:"uncompressed_size,omitempty"`
	TOCDigest        string            `json:"toc_digest,omitempty"`
	FilesVerified    *int              `json:"files_verified,omitempty"`
	ChunksVerified   *int              `json:"chunks_verified,omitempty"`
	Checks           []string          `json:"checks,omitempty"`
	Warnings         []string          `json:"warnings,omitempty"`
	Variant          string            `json:"variant,omitempty"`
	LazyReads        []LazyRead        `json:"lazy_reads,omitempty"`
}

// usageError marks a problem with the command line rather than with the input files.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func mustJSON(v any) string {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain data types are marshalled here
	}
	return string(data)
}

func intPtr(v int) *int       { return &v }
func int64Ptr(v int64) *int64 { return &v }

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // usage problems are reported as one line on stderr by main
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string, required ...string) error {
	if err := fs.Parse(args); err != nil {
		return usageError{fmt.Sprintf("%s: %v", fs.Name(), err)}
	}
	if fs.NArg() != 0 {
		return usageError{fmt.Sprintf("%s: unexpected arguments %q", fs.Name(), fs.Args())}
	}
	for _, name := range required {
		if fs.Lookup(name).Value.String() == "" {
			return usageError{fmt.Sprintf("%s: --%s is required", fs.Name(), name)}
		}
	}
	return nil
}

func run(args []string) (Result, error) {
	if len(args) == 0 {
		return Result{}, usageError{"missing subcommand (estargz, zstdchunked, gen-estargz, gen-zstdchunked, tar-tree)"}
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "estargz":
		fs := newFlagSet(sub)
		blob := fs.String("blob", "", "eStargz blob")
		tocDigest := fs.String("toc-digest", "", "expected TOC JSON digest")
		uncompressedSize := fs.Int64("uncompressed-size", -1, "expected size of the decompressed blob")
		if err := parseFlags(fs, rest, "blob", "toc-digest"); err != nil {
			return Result{}, err
		}
		return checkEstargz(*blob, *tocDigest, *uncompressedSize), nil
	case "zstdchunked":
		fs := newFlagSet(sub)
		blob := fs.String("blob", "", "zstd:chunked blob")
		annotationsFile := fs.String("annotations", "", "JSON file with the layer descriptor annotations")
		diffID := fs.String("diff-id", "", "expected digest of the decompressed blob")
		lazyFile := fs.String("lazy-file", "", "file the lazy readers read (default: the first with content)")
		if err := parseFlags(fs, rest, "blob", "annotations"); err != nil {
			return Result{}, err
		}
		return checkZstdChunked(*blob, *annotationsFile, *diffID, *lazyFile), nil
	case "gen-estargz":
		fs := newFlagSet(sub)
		tarPath := fs.String("tar", "", "plain tar input")
		out := fs.String("out", "", "blob output")
		chunkSize := fs.Int("chunk-size", 0, "eStargz chunk size (0: library default, 4 MiB)")
		workers := fs.Int("workers", 1, "parallel sub-blobs; pinned so golden blobs do not depend on the CPU count")
		if err := parseFlags(fs, rest, "tar", "out"); err != nil {
			return Result{}, err
		}
		return generateEstargz(*tarPath, *out, *chunkSize, *workers), nil
	case "gen-zstdchunked":
		fs := newFlagSet(sub)
		tarPath := fs.String("tar", "", "plain tar input")
		out := fs.String("out", "", "blob output")
		level := fs.Int("level", 3, "zstd level")
		if err := parseFlags(fs, rest, "tar", "out"); err != nil {
			return Result{}, err
		}
		return generateZstdChunked(*tarPath, *out, *level), nil
	case "tar-tree":
		fs := newFlagSet(sub)
		tarPath := fs.String("tar", "", "plain tar input")
		estargzOwnerNames := fs.Bool("estargz-owner-names", false, "apply the eStargz owner-name inheritance")
		if err := parseFlags(fs, rest, "tar"); err != nil {
			return Result{}, err
		}
		return plainTarTree(*tarPath, *estargzOwnerNames), nil
	default:
		return Result{}, usageError{fmt.Sprintf("unknown subcommand %q", sub)}
	}
}

// failed turns an error into a negative verdict, keeping whatever was learnt before the failure.
func failed(result Result, err error) Result {
	result.OK = false
	result.Error = err.Error()
	return result
}

func plainTarTree(tarPath string, inheritOwnerNames bool) Result {
	file, err := os.Open(tarPath)
	if err != nil {
		return failed(Result{}, err)
	}
	defer file.Close()
	tree, err := treeFromTar(file, tarTreeOptions{inheritOwnerNames: inheritOwnerNames})
	if err != nil {
		return failed(Result{}, err)
	}
	return Result{OK: true, Format: "tar", Tree: tree}
}

func main() {
	result, err := run(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "accel-conformance:", err)
		if errors.As(err, &usageError{}) {
			os.Exit(2)
		}
		os.Exit(1)
	}
	encoder := json.NewEncoder(os.Stdout)
	encoder.SetEscapeHTML(false)
	if err := encoder.Encode(result); err != nil {
		fmt.Fprintln(os.Stderr, "accel-conformance:", err)
		os.Exit(1)
	}
}
