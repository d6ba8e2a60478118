/* The handle of a drug AOT library: parameter, optimizer-state and activation buffers, binding
   a batch size (the arena layout of runtime/arena.py), running a step, checked accessors. */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drug_rt.h"

int drugrt_fail(drugrt_handle *h, int status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(h->error, sizeof h->error, format, args);
    va_end(args);
    return status;
}

static void *aligned_zeroed(size_t nbytes) {
    void *p = NULL;
    if (posix_memalign(&p, DRUGRT_ALIGN, nbytes ? nbytes : 1) != 0) return NULL;
    memset(p, 0, nbytes);
    return p;
}

int64_t drugrt_elements(int32_t ndim, const int64_t *shape, int64_t batch) {
    int64_t n = 1;
    for (int32_t i = 0; i < ndim; i++) n *= shape[i] < 0 ? batch : shape[i];
    return n;
}

static int64_t tensor_bytes(const drugrt_tensor *t) { return t->info.size * t->itemsize; }

static void fill(void *data, const drugrt_tensor *t) {
    for (int64_t i = 0; i < t->info.size; i++) {
        if (t->itemsize == 8) ((double *)data)[i] = t->fill;
        else ((float *)data)[i] = (float)t->fill;
    }
}

/* drug's own sgemm, in the library's object (backends/llvm/objects.py); the sgemm given to
   create() does the products it leaves to a BLAS (a column vector, an empty inner dimension).
   The last handle created names it for every handle of the library: all are CBLAS sgemms. */
extern void drugrt_sgemm(void);
extern void *drugrt_sgemm_fallback;
extern void drugrt_sconv(void); /* and drug's float32 convolution kernels (backends/llvm/gemm.py) */
extern void drugrt_sconv_filter(void);

int drugrt_init(drugrt_handle *h, const drugrt_model *model, void *sgemm) {
    memset(h, 0, sizeof *h);
    h->model = model;
    drugrt_sgemm_fallback = sgemm;
    h->runtime[DRUGRT_SGEMM] = (void *)drugrt_sgemm; /* no dgemm, no callback: drug-compile refuses graphs needing them */
    h->runtime[DRUGRT_SCONV] = (void *)drugrt_sconv;
    h->runtime[DRUGRT_SCONV_FILTER] = (void *)drugrt_sconv_filter;
    h->params = calloc((size_t)model->nparams + 1, sizeof(void *));
    h->states = calloc((size_t)model->nstates + 1, sizeof(void *));
    if (!h->params || !h->states) return DRUG_ERR_MEMORY;
    for (int32_t i = 0; i < model->nparams; i++) {
        const drugrt_tensor *t = &model->params[i];
        if (!(h->params[i] = aligned_zeroed((size_t)tensor_bytes(t)))) return DRUG_ERR_MEMORY;
        memcpy(h->params[i], t->data, (size_t)tensor_bytes(t));
    }
    for (int32_t i = 0; i < model->nstates; i++) {
        const drugrt_tensor *t = &model->states[i];
        if (!(h->states[i] = aligned_zeroed((size_t)tensor_bytes(t)))) return DRUG_ERR_MEMORY;
        fill(h->states[i], t);
    }
    for (int which = 0; which < 2; which++) {
        const drugrt_program *p = model->programs[which];
        if (!p) continue;
        void **table = calloc((size_t)p->nbuffers + 1, sizeof(void *));
        if (!(h->arenas[which].table = table)) return DRUG_ERR_MEMORY;
        for (int32_t s = 0; s < p->nbuffers; s++) {
            const drugrt_buffer *b = &p->buffers[s];
            if (b->kind == DRUGRT_PARAM) table[s] = h->params[b->index];
            else if (b->kind == DRUGRT_STATE) table[s] = h->states[b->index];
            else if (b->kind == DRUGRT_CONST) table[s] = (void *)model->consts[b->index].data;
        }
    }
    return DRUG_OK;
}

void drugrt_release(drugrt_handle *h) {
    const drugrt_model *model = h->model;
    for (int32_t i = 0; h->params && i < model->nparams; i++) free(h->params[i]);
    for (int32_t i = 0; h->states && i < model->nstates; i++) free(h->states[i]);
    free(h->params);
    free(h->states);
    for (int which = 0; which < 2; which++) {
        free(h->arenas[which].table);
        free(h->arenas[which].memory);
    }
    memset(h, 0, sizeof *h);
}

/* ---- arena layout: the first-fit packing of runtime/arena.py pack(), which the JIT uses too ---- */

static int64_t buffer_bytes(const drugrt_buffer *b, int64_t batch) {
    return drugrt_elements(b->ndim, b->shape, batch) * b->itemsize;
}

/* Insertion sorts (a few hundred buffers at most, sorted once per batch size); qsort would
   need a global for the batch, and handles may bind in several threads at once. */
static void sort_by_size_then_slot(const drugrt_program *p, int64_t batch, int32_t *order, int32_t n) {
    for (int32_t i = 1; i < n; i++) {
        int32_t slot = order[i], j = i;
        int64_t size = buffer_bytes(&p->buffers[slot], batch);
        while (j > 0) {
            int64_t before = buffer_bytes(&p->buffers[order[j - 1]], batch);
            if (before > size || (before == size && order[j - 1] < slot)) break; /* largest first */
            order[j] = order[j - 1];
            j--;
        }
        order[j] = slot;
    }
}

static void sort_intervals(int64_t *pairs, int32_t n) {
    for (int32_t i = 1; i < n; i++) {
        int64_t start = pairs[2 * i], end = pairs[2 * i + 1];
        int32_t j = i;
        while (j > 0 && (pairs[2 * j - 2] > start || (pairs[2 * j - 2] == start && pairs[2 * j - 1] > end))) {
            pairs[2 * j] = pairs[2 * j - 2];
            pairs[2 * j + 1] = pairs[2 * j - 1];
            j--;
        }
        pairs[2 * j] = start;
        pairs[2 * j + 1] = end;
    }
}

/* Byte offset of every temp (offsets[slot]) and the arena size; -1 when out of memory. */
static int64_t pack(const drugrt_program *p, int64_t batch, int64_t *offsets) {
    int32_t n = 0, *order = malloc(((size_t)p->nbuffers + 1) * sizeof *order);
    int64_t *sizes = malloc(((size_t)p->nbuffers + 1) * sizeof *sizes);
    int64_t *busy = malloc(((size_t)p->nbuffers + 1) * 2 * sizeof *busy);
    int64_t total = 0;
    if (!order || !sizes || !busy) {
        total = -1;
        goto done;
    }
    for (int32_t s = 0; s < p->nbuffers; s++)
        if (p->buffers[s].kind == DRUGRT_TEMP) order[n++] = s;
    sort_by_size_then_slot(p, batch, order, n);
    for (int32_t i = 0; i < n; i++) {
        const drugrt_buffer *b = &p->buffers[order[i]];
        int64_t bytes = buffer_bytes(b, batch), size = ((bytes > 1 ? bytes : 1) + DRUGRT_ALIGN - 1);
        size -= size % DRUGRT_ALIGN;
        int32_t nbusy = 0;
        for (int32_t j = 0; j < i; j++) { /* placed buffers alive at the same time */
            const drugrt_buffer *other = &p->buffers[order[j]];
            if (other->live_last < b->live_first || b->live_last < other->live_first) continue;
            busy[2 * nbusy] = offsets[order[j]];
            busy[2 * nbusy + 1] = offsets[order[j]] + sizes[j];
            nbusy++;
        }
        sort_intervals(busy, nbusy);
        int64_t offset = 0;
        for (int32_t j = 0; j < nbusy; j++) {
            if (offset + size <= busy[2 * j]) break;
            if (busy[2 * j + 1] > offset) offset = busy[2 * j + 1];
        }
        offsets[order[i]] = offset;
        sizes[i] = size;
        if (offset + size > total) total = offset + size;
    }
done:
    free(order);
    free(sizes);
    free(busy);
    return total;
}

int64_t drugrt_arena_bytes(const drugrt_program *program, int64_t batch) {
    int64_t *offsets = malloc(((size_t)program->nbuffers + 1) * sizeof *offsets);
    int64_t total = offsets ? pack(program, batch, offsets) : -1;
    free(offsets);
    return total;
}

/* Point the temps of program `which` into an arena laid out for `batch`. */
static int bind(drugrt_handle *h, const char *where, int which, int64_t batch) {
    drugrt_arena *arena = &h->arenas[which];
    const drugrt_program *p = h->model->programs[which];
    if (arena->batch == batch) return DRUG_OK;
    int64_t *offsets = malloc(((size_t)p->nbuffers + 1) * sizeof *offsets);
    int64_t total = offsets ? pack(p, batch, offsets) : -1;
    if (total >= 0 && (size_t)total > arena->capacity) {
        free(arena->memory);
        arena->batch = 0;
        arena->capacity = 0;
        if ((arena->memory = aligned_zeroed((size_t)total))) arena->capacity = (size_t)total;
        else total = -1;
    }
    if (total < 0) {
        free(offsets);
        return drugrt_fail(h, DRUG_ERR_MEMORY, "%s: out of memory for the activations of batch %lld", where,
                            (long long)batch);
    }
    for (int32_t s = 0; s < p->nbuffers; s++)
        if (p->buffers[s].kind == DRUGRT_TEMP) arena->table[s] = arena->memory + offsets[s];
    free(offsets);
    arena->batch = batch;
    return DRUG_OK;
}

int drugrt_run(drugrt_handle *h, const char *where, int which, const void *const *inputs, int64_t batch,
                void *const *outputs) {
    const drugrt_program *p = h->model->programs[which];
    h->error[0] = '\0';
    if (batch < 1 || batch > h->model->max_batch)
        return drugrt_fail(h, DRUG_ERR_BATCH, "%s: batch %lld is outside [1, %lld]", where, (long long)batch,
                            (long long)h->model->max_batch);
    for (int32_t i = 0; i < p->ninputs; i++)
        if (!inputs[i]) return drugrt_fail(h, DRUG_ERR_NULL, "%s: input '%s' is NULL", where, p->input_names[i]);
    for (int32_t i = 0; i < p->noutputs && !p->optional_outputs; i++)
        if (!outputs[i]) return drugrt_fail(h, DRUG_ERR_NULL, "%s: output '%s' is NULL", where, p->outputs[i].name);
    int status = bind(h, where, which, batch);
    if (status) return status;
    void **table = h->arenas[which].table;
    for (int32_t s = 0; s < p->nbuffers; s++)
        if (p->buffers[s].kind == DRUGRT_INPUT) table[s] = (void *)inputs[p->buffers[s].index];
    int32_t code = p->step(table, batch, h->runtime);
    if (code == DRUGRT_STATUS_INDEX_OUT_OF_RANGE)
        return drugrt_fail(h, DRUG_ERR_INDEX,
                            "%s: an index (label or embedding id) is out of range; the step was not completed",
                            where);
    if (code == DRUGRT_STATUS_OUT_OF_MEMORY)
        return drugrt_fail(h, DRUG_ERR_MEMORY, "%s: a loop ran out of scratch memory; the step was not completed",
                            where);
    if (code == DRUGRT_STATUS_OUT_OF_BOUNDS)
        return drugrt_fail(h, DRUG_ERR_INTERNAL, "%s: a kernel addressed memory outside its buffer (caught by the "
                            "DRUG_BOUNDS_CHECK=1 build of this library)", where);
    if (code) return drugrt_fail(h, DRUG_ERR_INTERNAL, "%s: the compiled step failed with status %d", where, code);
    for (int32_t i = 0; i < p->noutputs; i++) {
        const drugrt_output *o = &p->outputs[i];
        if (outputs[i])
            memcpy(outputs[i], table[o->slot], (size_t)(drugrt_elements(o->ndim, o->shape, batch) * o->itemsize));
    }
    if (p->counts_steps) h->step++;
    return DRUG_OK;
}

const drug_tensor_info *drugrt_param_info(const drugrt_model *model, int64_t index) {
    return index >= 0 && index < model->nparams ? &model->params[index].info : NULL;
}

int drugrt_param(drugrt_handle *h, const char *where, const char *name, void *values, int64_t count, int write) {
    const drugrt_model *m = h->model;
    h->error[0] = '\0';
    if (!name) return drugrt_fail(h, DRUG_ERR_NULL, "%s: the parameter name is NULL", where);
    if (!values) return drugrt_fail(h, DRUG_ERR_NULL, "%s: values is NULL (parameter '%s')", where, name);
    for (int32_t i = 0; i < m->nparams; i++) {
        const drugrt_tensor *t = &m->params[i];
        if (strcmp(t->info.name, name) != 0) continue;
        if (count != t->info.size)
            return drugrt_fail(h, DRUG_ERR_SIZE, "%s: parameter '%s' has %lld elements, count is %lld", where, name,
                                (long long)t->info.size, (long long)count);
        if (write) memcpy(h->params[i], values, (size_t)tensor_bytes(t));
        else memcpy(values, h->params[i], (size_t)tensor_bytes(t));
        return DRUG_OK;
    }
    int n = snprintf(h->error, sizeof h->error, "%s: no parameter named '%s'; parameters are", where, name);
    for (int32_t i = 0; i < m->nparams && n > 0 && (size_t)n < sizeof h->error; i++)
        n += snprintf(h->error + n, sizeof h->error - (size_t)n, "%s '%s'", i ? "," : "", m->params[i].info.name);
    return DRUG_ERR_NAME;
}

int drugrt_lr(drugrt_handle *h, const char *where, float *lr, int write) {
    h->error[0] = '\0';
    if (h->model->lr_state < 0)
        return drugrt_fail(h, DRUG_ERR_UNSUPPORTED, "%s: this library has no optimizer, so no learning rate", where);
    if (!lr) return drugrt_fail(h, DRUG_ERR_NULL, "%s: lr is NULL", where);
    float *state = h->states[h->model->lr_state];
    if (write) *state = *lr;
    else *lr = *state;
    return DRUG_OK;
}
