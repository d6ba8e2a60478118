/* The drug AOT runtime's internal interface: the tables a generated <name>_model.c describes its
   model with, and the functions its public wrappers call. Users include <name>.h, not this.
   Internal names start with drugrt_ (DRUGRT_), never drug_, so no library name can clash. */
#ifndef DRUGRT_H
#define DRUGRT_H

#include <stddef.h>
#include <stdint.h>

#include "drug_aot_common.h"

#define DRUGRT_ALIGN 64
#define DRUGRT_ERROR_LEN 1024

/* The entry compiler/codegen.py emits: i32 drug_step(ptr buffers, i64 batch, ptr runtime). */
typedef int32_t (*drugrt_step_fn)(void **buffers, int64_t batch, void **runtime);

/* Slots of the `runtime` table (backends/llvm/codegen.py RUNTIME_*). */
enum {
    DRUGRT_SGEMM = 0,
    DRUGRT_DGEMM = 1,
    DRUGRT_CALLBACK = 2,
    DRUGRT_SCONV = 3,
    DRUGRT_SCONV_FILTER = 4,
    DRUGRT_RUNTIME_SLOTS = 5
};

/* What a kernel returns (compiler/irutil.py STATUS_*). */
enum {
    DRUGRT_STATUS_CALLBACK_FAILED = 1,
    DRUGRT_STATUS_INDEX_OUT_OF_RANGE = 2,
    DRUGRT_STATUS_OUT_OF_MEMORY = 3,
    DRUGRT_STATUS_OUT_OF_BOUNDS = 4 /* only in code built with DRUG_BOUNDS_CHECK=1 */
};

enum drugrt_kind { DRUGRT_INPUT, DRUGRT_PARAM, DRUGRT_STATE, DRUGRT_CONST, DRUGRT_TEMP };

/* One slot of a step's pointer table (compiler/schedule.py Buffer). */
typedef struct {
    int32_t kind;         /* enum drugrt_kind */
    int32_t index;        /* input: argument position; param/state/const: index in the model's list */
    int64_t itemsize;
    int32_t ndim;
    const int64_t *shape; /* -1 marks the batch dimension */
    int32_t live_first;   /* temps: first and last kernel that touch the buffer */
    int32_t live_last;
} drugrt_buffer;

/* A value a step returns: copied out of its slot after the step. */
typedef struct {
    const char *name;
    int32_t slot;
    int64_t itemsize;
    int32_t ndim;
    const int64_t *shape;
} drugrt_output;

/* One compiled function of the model: the train step or the predictor. */
typedef struct {
    const char *name; /* "train_step" or "predict" */
    drugrt_step_fn step;
    int32_t nbuffers;
    const drugrt_buffer *buffers;
    int32_t ninputs;
    const char *const *input_names;
    int32_t noutputs;
    const drugrt_output *outputs;
    int32_t optional_outputs; /* outputs may be NULL (the train step's loss) */
    int32_t counts_steps;     /* a successful call increments the step count */
} drugrt_program;

/* A parameter, optimizer state buffer or constant. */
typedef struct {
    drug_tensor_info info;
    int64_t itemsize;
    const void *data; /* parameters, constants: the initial value (row-major) */
    double fill;      /* optimizer state: every element starts at this value */
} drugrt_tensor;

typedef struct {
    const char *name;
    int64_t max_batch;
    int32_t nparams;
    const drugrt_tensor *params;
    int32_t saved_params; /* params[0, saved_params) are the checkpoint's (the train step's) */
    int32_t nstates;
    const drugrt_tensor *states;
    int32_t nconsts;
    const drugrt_tensor *consts;
    int32_t lr_state; /* index of "hyper/lr" in states; -1 without optimizer */
    const drugrt_program *programs[2]; /* train step, predictor; either may be NULL */
} drugrt_model;

/* The activations of one program, sized for one batch. */
typedef struct {
    void **table; /* the pointer table passed to the step */
    unsigned char *memory;
    size_t capacity;
    int64_t batch; /* 0: not bound yet */
} drugrt_arena;

typedef struct {
    const drugrt_model *model;
    void *runtime[DRUGRT_RUNTIME_SLOTS];
    void **params;
    void **states;
    drugrt_arena arenas[2];
    int64_t step;
    char error[DRUGRT_ERROR_LEN];
} drugrt_handle;

/* rt_handle.c */
int drugrt_init(drugrt_handle *h, const drugrt_model *model, void *sgemm);
void drugrt_release(drugrt_handle *h);
int drugrt_fail(drugrt_handle *h, int status, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
int drugrt_run(drugrt_handle *h, const char *where, int which, const void *const *inputs, int64_t batch,
                void *const *outputs);
int drugrt_param(drugrt_handle *h, const char *where, const char *name, void *values, int64_t count, int write);
int drugrt_lr(drugrt_handle *h, const char *where, float *lr, int write);
const drug_tensor_info *drugrt_param_info(const drugrt_model *model, int64_t index);
int64_t drugrt_arena_bytes(const drugrt_program *program, int64_t batch);
int64_t drugrt_elements(int32_t ndim, const int64_t *shape, int64_t batch);

/* rt_sha256.c: FIPS 180-4 SHA-256, for the checkpoint digest of runtime/checkpoint.py */
typedef struct {
    uint32_t state[8];
    uint64_t length;
    unsigned char block[64];
    size_t used;
} drugrt_sha256;
void drugrt_sha256_init(drugrt_sha256 *s);
void drugrt_sha256_update(drugrt_sha256 *s, const void *data, size_t n);
void drugrt_sha256_hex(drugrt_sha256 *s, char hex[65]);

/* rt_zip.c: the subset of the zip format np.savez writes and np.load reads (stored entries) */
typedef struct {
    char *name; /* NUL-terminated copy */
    const unsigned char *data;
    uint64_t size;
} drugrt_zip_entry;
int drugrt_zip_parse(const unsigned char *file, size_t n, drugrt_zip_entry **entries, size_t *count, char *error,
                   size_t error_len);
void drugrt_zip_free(drugrt_zip_entry *entries, size_t count);
typedef struct drugrt_zip_writer drugrt_zip_writer;
drugrt_zip_writer *drugrt_zip_open(int fd);
int drugrt_zip_add(drugrt_zip_writer *w, const char *name, const void *head, size_t head_len, const void *body,
                 size_t body_len);
int drugrt_zip_close(drugrt_zip_writer *w); /* writes the central directory and frees w; 0 on success */

/* rt_checkpoint.c */
int drugrt_save(drugrt_handle *h, const char *where, const char *path);
int drugrt_load(drugrt_handle *h, const char *where, const char *path);

#endif /* DRUGRT_H */
